//! A private, real redis-server for tests that stop, restart or flush Redis
//! (which must not disturb the shared one other tests use).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// A node of a Redis Cluster (its bus on `port + 10000`).
    cluster: bool,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            cluster: false,
        };
        server.launch();
        server
    }

    /// A node for a cluster, not yet joined: on a free port whose bus port
    /// (+10000) is free too.
    fn start_cluster_node() -> Self {
        let port = loop {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            if port < 55_536 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            cluster: true,
        };
        server.launch();
        server
    }

    /// Starts redis-server (no persistence) and returns once it accepts connections.
    fn launch(&mut self) {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(if self.cluster {
                // A primary that is gone for 1 s is failed over; a replica
                // syncs at once, not 5 s later (one that never synced
                // cannot take over).
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--repl-diskless-sync-delay",
                    "0",
                ][..]
            } else {
                &[]
            })
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("redis-server exited while starting")
                .unwrap();
            if line.contains("Ready to accept connections") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server: its data is gone, as after a crash without persistence.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Thaws a frozen server (SIGCONT), its data intact.
    pub(crate) fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("the server runs");
        rustix::process::kill_process(rustix::process::Pid::from_child(child), signal).unwrap();
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Runs a command with redis-cli and returns its output.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis Cluster on loopback: 3 primaries with a replica each,
/// joined by `redis-cli --cluster create`, for tests that fail a primary
/// over (which must not disturb the shared cluster other tests use).
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes and returns once the cluster reports `cluster_state:ok`.
    pub(crate) fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_cluster_node()).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the cluster formed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.until_ok();
        cluster.until_replicas_synced();
        cluster
    }

    /// Waits until each of the three replicas has its primary's data.
    fn until_replicas_synced(&self) {
        for _ in 0..600 {
            let synced = self
                .nodes
                .iter()
                .filter(|n| {
                    n.cli(&["INFO", "replication"])
                        .contains("master_link_status:up")
                })
                .count();
            if synced == 3 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the replicas did not sync within 30 s");
    }

    /// fred's form of the cluster's URL, naming three nodes to start from.
    pub(crate) fn url(&self) -> String {
        let node = |n: &RedisServer| format!("127.0.0.1:{}", n.port);
        format!(
            "redis-cluster://{}?node={}&node={}",
            node(&self.nodes[0]),
            node(&self.nodes[1]),
            node(&self.nodes[2])
        )
    }

    /// A node still running.
    fn live(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a node runs")
    }

    /// The port of the primary that serves `key`, as the cluster sees it
    /// now; `None` while that primary is failing and not yet replaced.
    pub(crate) fn primary_of(&self, key: &str) -> Option<u16> {
        let node = self.live();
        let slot: u16 = node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        // `CLUSTER NODES`: id addr flags primary ping pong epoch state slots...
        for line in node.cli(&["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit_once(':').unwrap().1.parse().ok();
            }
        }
        None
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub(crate) fn nodes(&self) -> String {
        self.live().cli(&["CLUSTER", "NODES"])
    }

    /// Kills the node on `port`, as a crash would.
    pub(crate) fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
            .stop();
    }

    /// Starts the killed node on `port` again, with its cluster state: it
    /// rejoins (as a replica of whoever took its slots).
    pub(crate) fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        node.stop();
        node.launch();
    }

    /// The ports of the primaries serving slots now, lowest first.
    pub(crate) fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serving =
                    fields[2].contains("master") && !fields[2].contains("fail") && fields.len() > 8;
                let addr = fields[1].split('@').next()?;
                serving.then(|| addr.rsplit_once(':')?.1.parse().ok())?
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Whether every slot is served and every primary has a synced replica.
    pub(crate) fn whole(&self) -> bool {
        let info = self.live().cli(&["CLUSTER", "INFO"]);
        info.contains("cluster_state:ok")
            && self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .filter(|n| {
                    n.cli(&["INFO", "replication"])
                        .contains("master_link_status:up")
                })
                .count()
                == 3
    }

    /// Waits until every slot is served again (`cluster_state:ok` on a live node).
    pub(crate) fn until_ok(&self) {
        for _ in 0..600 {
            if self
                .live()
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the cluster did not reach cluster_state:ok within 30 s");
    }
}
