//! A private, real PostgreSQL for tests that stop and start it (which must
//! not disturb the shared one other tests use). Made with initdb and run
//! with pg_ctl as the `postgres` user, as `scripts/services.sh` does.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use rustix::process::{Pid, Signal, kill_process};

pub(crate) struct PgServer {
    pub(crate) port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's binaries (scripts/test installs them).
fn bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (scripts/test installs it)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or_default()
    });
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// Runs `program args` as the postgres user (initdb refuses root).
fn as_postgres(program: &PathBuf, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .current_dir("/tmp")
        .stdout(Stdio::null())
        .status()
        .expect("runuser");
    assert!(status.success(), "{} {args:?} failed", program.display());
}

impl PgServer {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = bin();
        let data = dir.path().join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let server = PgServer {
            port,
            bin,
            data,
            _dir: dir,
        };
        server.resume();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: sessions are ended, as in a failover).
    pub(crate) fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts it again on the same port and data; returns once it accepts.
    pub(crate) fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.parent().unwrap().join("pg.log");
        self.pg_ctl(&[
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
            "-w",
            "-t",
            "30",
            "start",
        ]);
    }

    /// Freezes every process of the server (SIGSTOP): connections stay
    /// open and nothing answers, as when its host hangs or the network
    /// drops packets. A statement already sent gets no reply.
    pub(crate) fn freeze(&self) {
        // The postmaster first, so it starts no backend the loop misses.
        self.signal(Signal::STOP);
    }

    /// Undoes [`PgServer::freeze`].
    pub(crate) fn thaw(&self) {
        self.signal(Signal::CONT);
    }

    fn signal(&self, signal: Signal) {
        for pid in self.processes() {
            match kill_process(pid, signal) {
                // A backend that ended after it was listed.
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => panic!("signalling PostgreSQL's process {pid:?}: {e}"),
            }
        }
    }

    /// The postmaster, then its children (the backends and workers).
    fn processes(&self) -> Vec<Pid> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids.into_iter().filter_map(Pid::from_raw).collect()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut all = vec!["-D", self.data.to_str().unwrap()];
        all.extend_from_slice(args);
        as_postgres(&self.bin.join("pg_ctl"), &all);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            // A frozen server cannot stop.
            self.thaw();
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
                .current_dir("/tmp")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
