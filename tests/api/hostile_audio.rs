//! Uploaded audio cannot harm a replica: a corpus of hostile samples (the
//! headers that made the parser abort the process, huge and zero-length
//! declared sizes, truncations, for every accepted container) and a bounded
//! fuzz run of mutated real files, each sent to a real `voicehub serve`
//! process. Every sample is either accepted or refused as INVALID_ARGUMENT
//! naming it; the server process lives throughout, its peak memory stays
//! bounded, and it still serves.

use std::{path::Path, time::Duration};

use tonic::{Code, Request};
use tonic_types::StatusExt;
use uuid::Uuid;
use voicehub::pb::{AudioSample, CreateVoiceCloneRequest, ListUserVoicesRequest};

use crate::helpers::{
    BIN, Backend, Client, JWT_SECRET, Server, TestDatabase, assert_invalid_field, consent,
    create_request, create_voice, serve, spawn_app_with, test_config, wait_for, wav,
};

/// Two seconds of speech in every accepted container (`scripts/audio-fixtures`).
const FIXTURES: [(&str, &str, &[u8]); 8] = [
    (
        "speech.wav",
        "audio/wav",
        include_bytes!("../fixtures/audio/speech.wav"),
    ),
    (
        "speech.mp3",
        "audio/mpeg",
        include_bytes!("../fixtures/audio/speech.mp3"),
    ),
    (
        "speech.ogg",
        "audio/ogg",
        include_bytes!("../fixtures/audio/speech.ogg"),
    ),
    (
        "speech.opus",
        "audio/ogg",
        include_bytes!("../fixtures/audio/speech.opus"),
    ),
    (
        "speech.flac",
        "audio/flac",
        include_bytes!("../fixtures/audio/speech.flac"),
    ),
    (
        "speech.m4a",
        "audio/mp4",
        include_bytes!("../fixtures/audio/speech.m4a"),
    ),
    (
        "speech.webm",
        "audio/webm",
        include_bytes!("../fixtures/audio/speech.webm"),
    ),
    (
        "speech-opus.webm",
        "audio/webm",
        include_bytes!("../fixtures/audio/speech-opus.webm"),
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    FIXTURES
        .iter()
        .find(|(file, ..)| *file == name)
        .map(|(_, _, data)| data.to_vec())
        .unwrap()
}

/// What a hostile sample must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused because parsing it broke the memory bound: without the
    /// bound, this sample aborts the process that parses it.
    OverMemory,
    /// Refused as not audio.
    Refused,
    /// Either accepted or refused: parsers may tolerate it (a RIFF size
    /// larger than the file is how streamed WAVs look).
    Either,
}

/// A box: big-endian size, type, payload.
fn mp4_box(kind: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(8 + payload.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&kind);
    out.extend_from_slice(payload);
    out
}

/// `data` with the big- or little-endian `u32` at `at` replaced.
fn with_u32(data: &[u8], at: usize, value: u32, big_endian: bool) -> Vec<u8> {
    let mut out = data.to_vec();
    let bytes = if big_endian {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    };
    out[at..at + 4].copy_from_slice(&bytes);
    out
}

fn find(data: &[u8], tag: &[u8]) -> usize {
    data.windows(tag.len())
        .position(|w| w == tag)
        .unwrap_or_else(|| panic!("{} in the fixture", String::from_utf8_lossy(tag)))
}

/// Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, unreflected), so a
/// mutated page still passes the demuxer's check and reaches the parser.
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in page {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x04C1_1DB7
            };
        }
    }
    crc
}

/// Re-signs the Ogg page that starts at `start`.
fn reseal_ogg_page(data: &mut [u8], start: usize) {
    let segments = usize::from(data[start + 26]);
    let body: usize = data[start + 27..start + 27 + segments]
        .iter()
        .map(|&s| usize::from(s))
        .sum();
    let end = start + 27 + segments + body;
    data[start + 22..start + 26].fill(0);
    let crc = ogg_crc(&data[start..end]);
    data[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// The hostile corpus: (what, content type, bytes, expectation).
#[allow(clippy::too_many_lines)] // one entry per case
fn corpus() -> Vec<(String, &'static str, Vec<u8>, Expect)> {
    let mut cases = Vec::new();
    let mut add = |what: &str, content_type: &'static str, data: Vec<u8>, expect| {
        cases.push((what.to_owned(), content_type, data, expect));
    };
    // M4A: each sample table's entry count set to 4 billion.
    let m4a = fixture("speech.m4a");
    for (table, offset) in [(&b"stts", 8), (&b"stsc", 8), (&b"stsz", 12), (&b"stco", 8)] {
        let at = find(&m4a, *table) + offset;
        add(
            &format!(
                "M4A whose {} declares 4 billion entries",
                String::from_utf8_lossy(*table)
            ),
            "audio/mp4",
            with_u32(&m4a, at, u32::MAX, true),
            Expect::OverMemory,
        );
    }
    // The 160-byte M4A from the report: stts and co64 declaring 4 billion entries.
    let count = [0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    let mut tiny = mp4_box(*b"ftyp", b"M4A \0\0\0\0M4A mp42isom");
    tiny.extend(mp4_box(
        *b"moov",
        &mp4_box(
            *b"trak",
            &mp4_box(
                *b"mdia",
                &mp4_box(
                    *b"minf",
                    &mp4_box(
                        *b"stbl",
                        &[mp4_box(*b"stts", &count), mp4_box(*b"co64", &count)].concat(),
                    ),
                ),
            ),
        ),
    ));
    tiny.resize(160, 0);
    add(
        "160-byte M4A with stts and co64 of 4 billion entries",
        "audio/mp4",
        tiny,
        Expect::OverMemory,
    );
    let mut zero_moov = mp4_box(*b"ftyp", b"M4A \0\0\0\0M4A mp42isom");
    zero_moov.extend(mp4_box(*b"moov", &[]));
    zero_moov.resize(200, 0);
    add(
        "M4A with an empty moov",
        "audio/mp4",
        zero_moov,
        Expect::Refused,
    );

    // WebM: the 600-byte file from the report, an EBML header whose second
    // DocType declares 32 TiB (the first makes it recognisably WebM);
    // truncations; a zero-length header.
    let mut webm = b"\x1a\x45\xdf\xa3\x01\x00\xff\x00\x00\x00\x00\x00\x42\x86\x81\x01\x42\x82\x84webm\x42\x82\x01\x00\x20\x00\x00\x00\x00\x00".to_vec();
    webm.resize(600, 0);
    add(
        "600-byte WebM whose DocType declares 32 TiB",
        "audio/webm",
        webm,
        Expect::OverMemory,
    );
    let real = fixture("speech.webm");
    add(
        "WebM cut at 600 bytes",
        "audio/webm",
        real[..600].to_vec(),
        Expect::Refused,
    );
    let mut empty = b"\x1a\x45\xdf\xa3\x80".to_vec();
    empty.resize(64, 0);
    add(
        "WebM with a zero-length EBML header",
        "audio/webm",
        empty,
        Expect::Refused,
    );

    // FLAC: a PICTURE block whose MIME type and description declare 4 GiB.
    let flac = fixture("speech.flac");
    let (streaminfo, rest) = flac.split_at(42);
    let mut head = streaminfo.to_vec();
    head[4] &= 0x7F; // STREAMINFO is no longer the last block
    let picture = [
        &[6u8, 0xFF, 0xFF, 0xFF][..],
        &3u32.to_be_bytes(),
        &0xFFFF_FFF0u32.to_be_bytes(),
    ]
    .concat();
    add(
        "FLAC picture with a 4 GiB MIME type",
        "audio/flac",
        [&head[..], &picture, rest].concat(),
        Expect::OverMemory,
    );
    let picture = [
        &[6u8, 0, 0, 200][..],
        &3u32.to_be_bytes(),
        &10u32.to_be_bytes(),
        b"image/jpeg",
        &0xFFFF_FFF0u32.to_be_bytes(),
        &[0; 178],
    ]
    .concat();
    add(
        "FLAC picture with a 4 GiB description",
        "audio/flac",
        [&head[..], &picture, rest].concat(),
        Expect::OverMemory,
    );
    let comment = [
        &[4u8, 0, 0, 100][..],
        &0xFFFF_FFF0u32.to_le_bytes(),
        &[0; 96],
    ]
    .concat();
    add(
        "FLAC comment with a 4 GiB vendor string",
        "audio/flac",
        [&head[..], &comment, rest].concat(),
        Expect::Refused,
    );
    let mut no_info = flac[..8].to_vec();
    no_info[5..8].fill(0);
    no_info.resize(300, 0);
    add(
        "FLAC with a zero-length STREAMINFO",
        "audio/flac",
        no_info,
        Expect::Refused,
    );

    // WAV: every chunk size at its maximum, and zero.
    let wave = fixture("speech.wav");
    add(
        "WAV whose RIFF size is 4 GiB",
        "audio/wav",
        with_u32(&wave, 4, u32::MAX, false),
        Expect::Either,
    );
    let data_at = find(&wave, b"data") + 4;
    add(
        "WAV whose data chunk is 4 GiB",
        "audio/wav",
        with_u32(&wave, data_at, u32::MAX, false),
        Expect::Either,
    );
    add(
        "WAV whose data chunk is empty",
        "audio/wav",
        with_u32(&wave, data_at, 0, false),
        Expect::Refused,
    );
    let fmt_at = find(&wave, b"fmt ") + 4;
    add(
        "WAV whose fmt chunk is 4 GiB",
        "audio/wav",
        with_u32(&wave, fmt_at, u32::MAX, false),
        Expect::Refused,
    );
    add(
        "WAV whose fmt chunk is empty",
        "audio/wav",
        with_u32(&wave, fmt_at, 0, false),
        Expect::Refused,
    );
    let list = [
        &wave[..12],
        b"LIST",
        &0xFFFF_FFF0u32.to_le_bytes(),
        b"INFO",
        &wave[12..],
    ]
    .concat();
    add(
        "WAV with a 4 GiB LIST chunk",
        "audio/wav",
        list,
        Expect::Refused,
    );

    // MP3: an ID3 tag declaring its largest size, then the audio.
    let mp3 = fixture("speech.mp3");
    add(
        "MP3 whose ID3 tag declares 256 MiB",
        "audio/mpeg",
        [&b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f"[..], &mp3].concat(),
        Expect::Refused,
    );
    add(
        "MP3 that is only an ID3 header",
        "audio/mpeg",
        b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec(),
        Expect::Refused,
    );

    // Ogg: the Vorbis comment's vendor length at 4 GiB, on a re-signed page.
    let mut ogg = fixture("speech.ogg");
    let comment = find(&ogg, b"\x03vorbis");
    ogg[comment + 7..comment + 11].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let page = ogg[..comment]
        .windows(4)
        .rposition(|w| w == b"OggS")
        .unwrap();
    reseal_ogg_page(&mut ogg, page);
    add(
        "Ogg Vorbis comment with a 4 GiB vendor string",
        "audio/ogg",
        ogg,
        Expect::Either,
    );

    // Every fixture cut to its first half and to its first 64 bytes.
    for (file, content_type, data) in FIXTURES {
        add(
            &format!("{file} cut in half"),
            content_type,
            data[..data.len() / 2].to_vec(),
            Expect::Either,
        );
        add(
            &format!("{file} cut to 64 bytes"),
            content_type,
            data[..64].to_vec(),
            Expect::Refused,
        );
    }
    cases
}

/// A user's client of `server` that may send the corpus's largest samples.
fn client_of(server: &Server, user: Uuid) -> Client {
    server
        .client(user)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// A create of one real WAV and then `data`, so a refusal must name the
/// second sample, not the first.
fn request(name: &str, content_type: &str, data: Vec<u8>) -> CreateVoiceCloneRequest {
    CreateVoiceCloneRequest {
        name: name.chars().take(100).collect(),
        samples: vec![
            AudioSample {
                filename: "good.wav".into(),
                content_type: "audio/wav".into(),
                data: wav(1_000).into(),
            },
            AudioSample {
                filename: "sample".into(),
                content_type: content_type.into(),
                data: data.into(),
            },
        ],
        consent: Some(consent()),
        ..Default::default()
    }
}

/// A server for this file's tests: no create limits, room for many voices,
/// one user's uploads in parallel.
fn server(dir: &Path) -> Server {
    serve(
        dir,
        &[
            ("VOICEHUB_JWT_SECRET", JWT_SECRET),
            ("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "0"),
            ("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0"),
            ("VOICEHUB_CREATE_LIMIT_PER_DAY", "0"),
            ("VOICEHUB_MAX_VOICES_PER_USER", "100000"),
        ],
    )
}

/// The server's peak and current resident memory, in KiB.
fn memory_of(server: &Server) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn assert_alive(server: &mut Server) {
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server process died: {:?}",
        server
            .logs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Log lines of `server` that report a broken bound of the audio check.
fn bounds_broken(server: &Server, bound: &str) -> usize {
    server
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("a sample broke a bound of the audio check"))
        .filter(|l| l.contains(&format!("\"bound\":\"{bound}\"")))
        .count()
}

#[test]
fn the_hostile_samples_abort_a_parser_that_is_not_bounded() {
    // Reproduction: the checker's child, whose bound turns the abort into a
    // verdict, dies exactly as the serving process used to on these files.
    let cases: Vec<_> = corpus()
        .into_iter()
        .filter(|(.., expect)| *expect == Expect::OverMemory)
        .collect();
    assert_eq!(cases.len(), 8, "the over-memory cases");
    for (what, content_type, data, _) in cases {
        let code = match content_type {
            "audio/mp4" => 4u8,
            "audio/webm" => 5,
            "audio/flac" => 3,
            other => panic!("{other}"),
        };
        let mut input = vec![code];
        input.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        input.extend_from_slice(&data);
        let mut child = std::process::Command::new(BIN)
            .arg("check-audio")
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            Some(6),
            "{what}: SIGABRT, {stderr}"
        );
        assert!(stderr.contains("memory allocation of"), "{what}: {stderr}");
        assert!(output.stdout.is_empty(), "{what}: no verdict");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_sample_is_refused_naming_it_and_the_server_lives_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let user = Uuid::new_v4();
    let mut client = client_of(&server, user);
    let (mut accepted, mut refused, mut over_memory) = (0, 0, 0);
    for (what, content_type, data, expect) in corpus() {
        match client
            .create_voice_clone(request(&what, content_type, data))
            .await
        {
            Ok(_) => {
                assert_eq!(expect, Expect::Either, "{what}: accepted");
                accepted += 1;
            }
            Err(status) => {
                assert_invalid_field(&status, "samples[1].data");
                if expect == Expect::OverMemory {
                    assert!(
                        status.message().contains("256 MiB of memory"),
                        "{what}: {status:?}"
                    );
                    over_memory += 1;
                }
                refused += 1;
            }
        }
        assert_alive(&mut server);
    }
    println!(
        "hostile corpus: {accepted} accepted, {refused} refused ({over_memory} over the memory bound)"
    );
    assert_eq!(over_memory, 8);
    // Log lines are written by a thread of the server's own, so the last
    // may reach its stderr a moment after its call was answered.
    wait_for(Duration::from_secs(5), || {
        bounds_broken(&server, "memory") >= 8
    })
    .await;
    assert_eq!(bounds_broken(&server, "memory"), 8, "each logged once");
    // Nothing refused was written, and the server still creates.
    let stored = client
        .list_user_voices(ListUserVoicesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .voices
        .len();
    assert_eq!(
        stored, accepted,
        "a voice per accepted sample, none per refused one"
    );
    let fine = request("After the corpus", "audio/wav", fixture("speech.wav"));
    create_voice(&mut client, fine).await;
    let (peak, now) = memory_of(&server);
    println!(
        "server memory: peak {} MiB, now {} MiB",
        peak / 1024,
        now / 1024
    );
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB");
}

/// A small deterministic generator (xorshift64*): the fuzz run is the same
/// on every machine and every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    /// An offset into `len` bytes, three times in four within the first
    /// 512, where containers keep their headers.
    fn offset(&mut self, len: usize) -> usize {
        if self.below(4) > 0 {
            self.below(len.min(512))
        } else {
            self.below(len)
        }
    }
}

/// `data` with one to three random mutations.
fn mutate(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..=rng.below(3) {
        if out.len() < 16 {
            break;
        }
        let at = rng.offset(out.len() - 8);
        match rng.below(6) {
            0 => {
                for i in 0..=rng.below(4) {
                    out[at + i] = rng.next().to_le_bytes()[0];
                }
            }
            1 => {
                // A declared size or count at an extreme.
                let value = [u32::MAX, 0x7FFF_FFFF, 0x8000_0000, 0, 0x0010_0000][rng.below(5)];
                let bytes = if rng.below(2) == 0 {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                out[at..at + 4].copy_from_slice(&bytes);
            }
            2 => out.truncate(at.max(16)),
            3 => {
                let len = rng.below(64).min(out.len() - at);
                let chunk = out[at..at + len].to_vec();
                let to = rng.offset(out.len());
                out.splice(to..to, chunk);
            }
            4 => {
                let len = rng.below(32).min(out.len() - at);
                out[at..at + len].fill(0);
            }
            _ => {
                // An EBML size of "8 bytes follow", then a large value.
                out[at] = 0x01;
                out[at + 1..at + 8].copy_from_slice(&rng.next().to_be_bytes()[1..]);
            }
        }
    }
    out
}

/// Cases in the fuzz run: a fixed number, from a fixed seed.
const FUZZ_CASES: usize = 2400;
const FUZZ_SEED: u64 = 0x766F_6963_6568_7562; // "voicehub"

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_fuzz_run_of_mutated_samples_never_harms_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let client = client_of(&server, Uuid::new_v4());
    let (peak_before, _) = memory_of(&server);
    let mut rng = Rng(FUZZ_SEED);
    let cases: Vec<_> = (0..FUZZ_CASES)
        .map(|i| {
            let (file, content_type, data) = FIXTURES[i % FIXTURES.len()];
            (format!("{file} #{i}"), content_type, mutate(&mut rng, data))
        })
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut pending = cases.into_iter();
    loop {
        while calls.len() < 4
            && let Some((what, content_type, data)) = pending.next()
        {
            let mut client = client.clone();
            calls.spawn(async move {
                let result = client
                    .create_voice_clone(request(&what, content_type, data))
                    .await;
                (what, result)
            });
        }
        let Some(done) = calls.join_next().await else {
            break;
        };
        let (what, result) = done.unwrap();
        let outcome = match result {
            Ok(_) => "accepted".to_owned(),
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
                let field = &status.get_details_bad_request().unwrap().field_violations[0].field;
                assert!(field.starts_with("samples[1]."), "{what}: {status:?}");
                format!("refused ({field})")
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_alive(&mut server);
    assert_eq!(outcomes.values().sum::<usize>(), FUZZ_CASES);
    wait_for(Duration::from_secs(5), || {
        bounds_broken(&server, "memory") > 0
    })
    .await;
    let (peak, now) = memory_of(&server);
    println!(
        "fuzz run: {FUZZ_CASES} cases (seed {FUZZ_SEED:#x}): {outcomes:?}; bounds broken: memory {}, cpu {}, stack {}, crash {}; server memory peak {} MiB (before {} MiB), now {} MiB",
        bounds_broken(&server, "memory"),
        bounds_broken(&server, "cpu"),
        bounds_broken(&server, "stack"),
        bounds_broken(&server, "crash"),
        peak / 1024,
        peak_before / 1024,
        now / 1024
    );
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB");
    // The run reaches what it is for: samples that, parsed in the server,
    // would have aborted it (the count is fixed by the seed).
    assert!(
        bounds_broken(&server, "memory") > 0,
        "no case reached the memory bound"
    );
    // The server still serves.
    let mut client = client;
    let fine = request("After the fuzz run", "audio/wav", fixture("speech.wav"));
    create_voice(&mut client, fine).await;
}

/// An executable shell script at `dir/name` standing in for the checker: it
/// passes the start-up self-test (empty input) and then does `body`.
fn fake_checker(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\n[ \"$(head -c1 | wc -c)\" = 0 ] && exit 0\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The state letter of process `pid` (`Z` a zombie), `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn a_checker_that_cannot_run_stops_start_up_with_its_name() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let mut config = test_config(Backend::Sqlite, &db);
    config.audio_check.program = "/nonexistent/voicehub".into();
    let error = Box::pin(voicehub::Application::build(config))
        .await
        .err()
        .expect("start-up refuses");
    let message = format!("{error:#}");
    assert!(
        message.contains("the audio checker (/nonexistent/voicehub check-audio) does not run"),
        "{message}"
    );
}

#[tokio::test]
async fn a_checker_that_breaks_mid_call_makes_the_call_unavailable_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Reads its first byte, then exits cleanly without a verdict.
    let program = fake_checker(dir.path(), "silent", "exit 0");
    let app = spawn_app_with(Backend::Sqlite, |c| c.audio_check.program = program).await;
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Unchecked"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "the audio check is unavailable, try again later",
        "no internal detail"
    );
    assert_eq!(app.voice_rows().await, 0);
    assert_eq!(
        app.metric("voicehub_audio_checks_total{outcome=\"failed\"}"),
        1
    );
}

#[tokio::test]
async fn a_sample_over_the_cpu_bound_is_refused_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // The kernel's CPU limit, lowered to a second, ends a spinning parser.
    let program = fake_checker(dir.path(), "spin", "ulimit -S -t 1\nwhile :; do :; done");
    let app = spawn_app_with(Backend::Sqlite, |c| c.audio_check.program = program).await;
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Spinning"))
        .await
        .unwrap_err();
    assert_invalid_field(&status, "samples[0].data");
    assert!(status.message().contains("s of CPU time"), "{status:?}");
    assert_eq!(app.voice_rows().await, 0);
    assert_eq!(
        app.metric("voicehub_audio_bounds_broken_total{bound=\"cpu\"}"),
        1
    );
}

#[tokio::test]
async fn a_checker_over_the_wall_bound_or_cancelled_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let program = fake_checker(
        dir.path(),
        "stall",
        &format!("echo $$ >> {}\nexec sleep 60", pids.display()),
    );
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.audio_check.program = program;
        c.audio_check.wall = Duration::from_secs(1);
    })
    .await;
    let mut client = app.client(Uuid::new_v4());

    // Past the wall bound: killed, and the call is UNAVAILABLE (retryable).
    let status = client
        .create_voice_clone(create_request("Stalled"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        app.metric("voicehub_audio_bounds_broken_total{bound=\"wall\"}"),
        1
    );

    // A caller that gives up first: its call's child is killed too.
    let mut request = Request::new(create_request("Abandoned"));
    request.set_timeout(Duration::from_millis(300));
    let status = client.create_voice_clone(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");

    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "one child per call");
    wait_for(Duration::from_secs(5), || {
        started
            .iter()
            .all(|&pid| matches!(process_state(pid), None | Some('Z')))
    })
    .await;
    for pid in started {
        assert!(
            matches!(process_state(pid), None | Some('Z')),
            "child {pid} still runs"
        );
    }
    assert_eq!(app.voice_rows().await, 0);
}
