//! The checking side of the audio check: `voicehub check-audio`, run by a
//! serving process as its child, never by hand.
//!
//! Protocol: standard input holds the samples, each as one format byte, a
//! little-endian `u32` length and that many bytes, until end of input.
//! Standard output gets one line per sample, in order, written as soon as
//! it is known: `ok <the sample's figures as JSON>` or `no <why, for the
//! caller>`. At most [`ANALYSED_AUDIO`] of the samples' audio (of 48 kHz
//! stereo, proportionally less at more channels or higher rates) is analysed,
//! in order; the rest is measured for its duration only. Exit status 0 after the last verdict; 2 if the input breaks
//! the protocol.
//!
//! Guarantees: before it reads a byte, the process forbids itself core
//! files and more than [`CPU_BOUND`] of CPU time; once the samples are in
//! memory, it forbids itself more than [`MEMORY_BOUND`] of further address
//! space. A parser that asks for more gets no memory and the process
//! aborts; the server reads that as the sample's fault. A panicking parser
//! is caught and its sample refused.

use std::{
    io::{BufWriter, Read, Write},
    panic::AssertUnwindSafe,
    process::ExitCode,
};

use bytes::Bytes;
use rustix::process::{Resource, Rlimit, setrlimit};

use super::{ANALYSED_AUDIO, CPU_BOUND, Format, MEMORY_BOUND, analysis::analyse};

/// The most samples one input holds (a call carries at most 25).
const MAX_SAMPLES: usize = 32;

/// The most sample bytes one input holds (a call carries at most 50 MiB).
pub(crate) const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// Runs the check on standard input; the `check-audio` subcommand.
#[must_use]
pub fn main() -> ExitCode {
    // Limits that cannot be set leave the process unbounded: refuse to run.
    if let Err(e) = bound_before_reading() {
        eprintln!("check-audio: cannot set resource limits: {e}");
        return ExitCode::from(2);
    }
    let samples = match read_samples(&mut std::io::stdin().lock()) {
        Ok(samples) => samples,
        Err(e) => {
            eprintln!("check-audio: bad input: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = bound_memory() {
        eprintln!("check-audio: cannot bound memory: {e}");
        return ExitCode::from(2);
    }
    // Panics are verdicts, not noise on standard error.
    std::panic::set_hook(Box::new(|_| {}));
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut budget = ANALYSED_AUDIO;
    for (format, data) in samples {
        let verdict = std::panic::catch_unwind(AssertUnwindSafe(|| analyse(format, data, budget)))
            .unwrap_or_else(|_| Err("its audio is damaged (the parser failed on it)".into()));
        let written = match verdict {
            Ok(figures) => {
                budget = budget.saturating_sub(figures.budget_used());
                serde_json::to_string(&figures)
                    .map_err(std::io::Error::other)
                    .and_then(|json| writeln!(out, "ok {json}"))
            }
            Err(why) => writeln!(out, "no {}", why.replace('\n', " ")),
        };
        // The server stops listening after a refusal; nothing more to say.
        if written.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::SUCCESS
}

/// No core file (a crash on a hostile sample must not write gigabytes to
/// disk) and a CPU-time limit (the kernel sends SIGXCPU past it).
fn bound_before_reading() -> rustix::io::Result<()> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    let cpu = CPU_BOUND.as_secs();
    setrlimit(
        Resource::Cpu,
        Rlimit {
            current: Some(cpu),
            maximum: Some(cpu + 1),
        },
    )
}

/// The address space this process has now, plus [`MEMORY_BOUND`].
fn bound_memory() -> std::io::Result<()> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("unreadable /proc/self/statm"))?;
    let now = pages * rustix::param::page_size() as u64;
    let limit = now + MEMORY_BOUND;
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )?;
    Ok(())
}

/// Reads every framed sample of `input`, each into a buffer of exactly its size.
fn read_samples(input: &mut impl Read) -> std::io::Result<Vec<(Format, Bytes)>> {
    let mut samples = Vec::new();
    let mut total = 0usize;
    loop {
        let mut code = [0u8; 1];
        if input.read(&mut code)? == 0 {
            return Ok(samples);
        }
        let format = Format::from_code(code[0])
            .ok_or_else(|| std::io::Error::other(format!("unknown format code {}", code[0])))?;
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        total += len;
        if samples.len() == MAX_SAMPLES || total > MAX_INPUT_BYTES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_SAMPLES} samples or {MAX_INPUT_BYTES} bytes"
            )));
        }
        let mut data = vec![0u8; len];
        input.read_exact(&mut data)?;
        samples.push((format, data.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_samples_are_read_back_and_oversized_input_is_refused() {
        let mut input = Vec::new();
        for (format, data) in [
            (Format::Wav, &b"RIFF"[..]),
            (Format::WebM, &b"\x1a\x45"[..]),
        ] {
            input.push(format.code());
            input.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            input.extend_from_slice(data);
        }
        let samples = read_samples(&mut input.as_slice()).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1], (Format::WebM, Bytes::from_static(b"\x1a\x45")));

        // A length beyond the input's bound is refused before any buffer is made.
        let mut huge = vec![Format::Mp4.code()];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_samples(&mut huge.as_slice()).is_err());
        // Unknown formats and short input are refused.
        assert!(read_samples(&mut [0xEEu8, 0, 0, 0, 0].as_slice()).is_err());
        assert!(read_samples(&mut [Format::Wav.code(), 9, 0, 0, 0, 1].as_slice()).is_err());
    }
}
