//! Audio formats accepted as voice samples, recognised both by declared
//! content type and by the data's magic bytes (via `infer`), so a sample
//! whose bytes and label disagree is refused before it reaches the provider.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    use super::*;

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
}
