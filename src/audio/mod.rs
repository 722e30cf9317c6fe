//! Voice samples: what format they are, and whether they are audio.
//!
//! Role: a sample's format is recognised both by its declared content type
//! and by its magic bytes (via `infer`), so a sample whose bytes and label
//! disagree is refused before it reaches the provider ([`Format`]). Then it
//! is parsed (symphonia): its container must open, hold an audio track, and
//! its first packets decode. A signature followed by anything else (a bare
//! `RIFF....WAVE`, `ID3` or `OggS` with text after it) is refused. Then it
//! is measured for the sample quality report ([`Figures`], `analysis.rs`),
//! and the figures are judged against the operator's thresholds
//! (`report.rs`).
//!
//! Guarantee: the serving process never parses uploaded audio. A container
//! header may declare terabytes (a WebM element, an MP4 sample table), and a
//! parser that believes it makes the allocator abort the process. So
//! [`Checker`] parses every sample in a child process (`voicehub
//! check-audio`, [`child`]) under hard bounds: [`MEMORY_BOUND`] of memory
//! beyond the samples themselves, [`CPU_BOUND`] of CPU time, a wall time
//! ([`WALL_BOUND`] by default), no core file, an empty environment, and at most one child
//! per CPU at a time. A sample that breaks a bound is refused, naming it; the
//! server, and every other call, carry on.

use std::time::Duration;

mod analysis;
mod check;
pub mod child;
mod report;

pub(crate) use analysis::Figures;
pub use check::{CPU_BOUND, CheckerConfig, MEMORY_BOUND, WALL_BOUND};
pub(crate) use check::{CheckError, Checker, Sample};
pub use report::QualityThresholds;
pub(crate) use report::{Report, Severity, Verdict, judge};

/// The shortest sample accepted: less than a second of speech carries no
/// voice worth cloning.
pub const MIN_SAMPLE_DURATION: Duration = Duration::from_secs(1);

/// The most audio one call's samples are analysed for, in order: past it,
/// a sample is only measured for its duration. In seconds of 48 kHz
/// stereo: more channels or a higher rate get proportionally less, so no
/// format costs more. Ten minutes is more than three times what a clone
/// gains from, and its analysis fits the check's CPU bound with room to
/// spare.
pub const ANALYSED_AUDIO: Duration = Duration::from_mins(10);

/// An accepted audio format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Format {
    Wav,
    Mp3,
    Ogg,
    Flac,
    Mp4,
    WebM,
}

impl Format {
    /// The format a MIME type names (parameters and case ignored).
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Format::Wav,
            "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg-3" => Format::Mp3,
            "audio/ogg" | "audio/opus" | "application/ogg" => Format::Ogg,
            "audio/flac" | "audio/x-flac" => Format::Flac,
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" => Format::Mp4,
            "audio/webm" => Format::WebM,
            _ => return None,
        })
    }

    /// The format the data's leading bytes show.
    pub(crate) fn sniff(data: &[u8]) -> Option<Self> {
        use infer::{audio, video};
        if audio::is_wav(data) {
            Some(Format::Wav)
        } else if audio::is_mp3(data) {
            Some(Format::Mp3)
        } else if audio::is_ogg(data) || audio::is_ogg_opus(data) {
            Some(Format::Ogg)
        } else if audio::is_flac(data) {
            Some(Format::Flac)
        } else if audio::is_m4a(data) || video::is_mp4(data) {
            Some(Format::Mp4)
        } else if video::is_webm(data) {
            Some(Format::WebM)
        } else {
            None
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Wav => "WAV",
            Format::Mp3 => "MP3",
            Format::Ogg => "OGG",
            Format::Flac => "FLAC",
            Format::Mp4 => "M4A/MP4",
            Format::WebM => "WebM",
        }
    }

    /// The byte that stands for this format between a server and its checker.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The format `code` stands for.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        [
            Format::Wav,
            Format::Mp3,
            Format::Ogg,
            Format::Flac,
            Format::Mp4,
            Format::WebM,
        ]
        .into_iter()
        .find(|f| f.code() == code)
    }

    /// The file extension symphonia is hinted with.
    fn extension(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
            Format::Flac => "flac",
            Format::Mp4 => "m4a",
            Format::WebM => "webm",
        }
    }

    /// The content type sent on to the provider.
    pub(crate) fn canonical_content_type(self) -> &'static str {
        match self {
            Format::Wav => "audio/wav",
            Format::Mp3 => "audio/mpeg",
            Format::Ogg => "audio/ogg",
            Format::Flac => "audio/flac",
            Format::Mp4 => "audio/mp4",
            Format::WebM => "audio/webm",
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{analysis::analyse, *};

    const BUDGET: Duration = ANALYSED_AUDIO;

    #[test]
    fn magic_bytes_and_content_types_agree_per_format() {
        let samples: [(&[u8], &str, Format); 6] = [
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav", Format::Wav),
            (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg", Format::Mp3),
            (b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00", "audio/ogg; codecs=opus", Format::Ogg),
            (b"fLaC\x00\x00\x00\x22", "audio/flac", Format::Flac),
            (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio/x-m4a", Format::Mp4),
            (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82\x84webm", "audio/webm", Format::WebM),
        ];
        for (data, content_type, format) in samples {
            // Real files are longer than their headers; some signatures need 256 bytes.
            let mut data = data.to_vec();
            data.resize(512, 0);
            assert_eq!(Format::sniff(&data), Some(format), "{content_type}");
            assert_eq!(Format::from_content_type(content_type), Some(format));
        }
        assert_eq!(Format::sniff(b"%PDF-1.7"), None);
        assert_eq!(Format::from_content_type("image/png"), None);
    }

    /// A PCM WAV of `millis` ms of a 440 Hz tone, 16 kHz mono.
    fn wav(millis: u32) -> Bytes {
        let samples = 16 * millis;
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + samples * 2).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        for field in [16u32, 0x0001_0001, 16_000, 32_000, 0x0010_0002] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(samples * 2).to_le_bytes());
        for i in 0..samples {
            let t = f64::from(i) / 16_000.0;
            #[allow(clippy::cast_possible_truncation)]
            let v = (f64::sin(2.0 * std::f64::consts::PI * 440.0 * t) * 8_000.0) as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.into()
    }

    /// An ID3v2.3 tag with a title, then `frames` silent MPEG-1 Layer III
    /// frames (128 kb/s, 44.1 kHz: 26 ms each).
    fn mp3(frames: usize) -> Bytes {
        let mut out =
            b"ID3\x03\x00\x00\x00\x00\x00\x0fTIT2\x00\x00\x00\x05\x00\x00\x00Take".to_vec();
        for _ in 0..frames {
            out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
            out.extend(std::iter::repeat_n(0u8, 413));
        }
        out.into()
    }

    #[test]
    fn real_audio_parses_with_its_duration() {
        let wav = analyse(Format::Wav, wav(1_500), BUDGET)
            .unwrap()
            .duration_seconds;
        assert!((wav - 1.5).abs() < 0.01, "{wav:?}");
        let mp3 = analyse(Format::Mp3, mp3(40), BUDGET)
            .unwrap()
            .duration_seconds;
        assert!((mp3 - 1.045).abs() < 0.03, "{mp3:?}");
    }

    #[test]
    fn a_signature_followed_by_anything_else_is_not_audio() {
        let cases: [(Format, &[u8]); 5] = [
            (Format::Wav, b"RIFF\x04\x00\x00\x00WAVE"),
            (
                Format::Wav,
                b"RIFF\x00\x10\x00\x00WAVEjunk\x13\x37\xde\xad\xbe\xef\x01\x02",
            ),
            (
                Format::Mp3,
                b"ID3\x04\x00\x00\x00\x00\x00\x00this is not audio at all",
            ),
            (Format::Ogg, b"OggS\x00\x02 and then some text"),
            (Format::Flac, b"fLaC and a story"),
        ];
        for (format, data) in cases {
            let mut data = data.to_vec();
            data.extend(std::iter::repeat_n(b'x', 600));
            let why = analyse(format, data.into(), BUDGET).unwrap_err();
            assert!(!why.is_empty(), "{format:?}");
        }
    }
}
