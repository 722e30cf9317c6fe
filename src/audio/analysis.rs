//! What a sample sounds like, in figures: the measuring half of the sample
//! quality report (judging the figures is `report.rs`, in the server).
//!
//! Role: decodes a sample in full and measures, while it streams through:
//! integrated loudness and true peak (EBU R128, `ebur128`), the share of
//! samples in clipped runs, speech seconds (voice activity detection,
//! `earshot`, on a 16 kHz mono copy made by `rubato`), silence at either
//! end, and an estimate of the signal-to-noise ratio.
//!
//! Guarantees: memory does not grow with the audio's length beyond one
//! `f32` per 16-ms frame (the frame powers the noise estimate needs); at
//! most the analysis budget of audio is decoded, the rest is only demuxed
//! for its duration, and the figures say how much was analysed. Runs only in
//! the `check-audio` child, under its bounds. The budget is in seconds of
//! 48 kHz stereo: more channels or a higher rate get proportionally less.
//!
//! Definitions (also in `docs/sample-quality.md`):
//! - a *frame* is 16 ms of the 16 kHz mono copy (256 samples, the voice
//!   activity detector's frame); it is *speech* when the detector scores it
//!   at least 0.5, *silent* when its level is below [`SILENCE_DBFS`];
//! - *clipped* samples are those in runs of at least [`CLIP_RUN`]
//!   consecutive samples of one channel at or above [`CLIP_LEVEL`] of full
//!   scale (a lone full-scale peak is not clipping; a flat top is);
//! - the *noise floor* is the 5th percentile of frame powers; the SNR is
//!   the mean power of speech frames less the noise floor, over the noise
//!   floor, capped at [`MAX_SNR_DB`]; none below a second of speech.

use std::{io::Cursor, time::Duration};

use audioadapter_buffers::direct::InterleavedSlice;
use bytes::Bytes;
use earshot::Detector;
use ebur128::{EbuR128, Mode};
use rubato::{Fft, FixedSync, Indexing, Resampler};
use serde::{Deserialize, Serialize};
use symphonia::core::{
    audio::{Channels, SampleBuffer},
    codecs::{CODEC_TYPE_NULL, CODEC_TYPE_OPUS, DecoderOptions},
    errors::Error as ParseError,
    formats::{FormatOptions, FormatReader},
    io::{MediaSourceStream, MediaSourceStreamOptions},
    meta::MetadataOptions,
    probe::Hint,
    units::TimeBase,
};

use super::Format;

/// The rate the voice activity detector hears.
const VAD_RATE: u32 = 16_000;
/// Samples per frame at [`VAD_RATE`]: 16 ms.
const FRAME: usize = 256;
/// Seconds per frame: [`FRAME`] / [`VAD_RATE`].
const FRAME_SECONDS: f64 = 0.016;
/// The detector's score from which a frame is speech (its authors' default).
const SPEECH_SCORE: f32 = 0.5;
/// A frame quieter than this (RMS, dB relative to full scale) is silent:
/// below a quiet room's noise, inaudible at any normal gain.
pub(crate) const SILENCE_DBFS: f64 = -60.0;
/// A sample this close to full scale may be clipped.
pub(crate) const CLIP_LEVEL: f32 = 0.999;
/// Consecutive samples at [`CLIP_LEVEL`] that make a clipped run.
pub(crate) const CLIP_RUN: u32 = 3;
/// The percentile of frame powers taken as the noise floor.
const NOISE_PERCENTILE: f64 = 0.05;
/// The lowest noise floor assumed: −100 dBFS (digital silence has none).
const NOISE_FLOOR_MIN: f64 = 1e-10;
/// Speech needed for an SNR estimate.
const MIN_SNR_SPEECH_SECONDS: f64 = 1.0;
/// The highest SNR reported: beyond it, the figure means nothing.
pub(crate) const MAX_SNR_DB: f64 = 100.0;
/// Sample rates analysed; others are refused (no real recording has them,
/// and resampling from them costs memory out of proportion).
pub(crate) const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;
/// Packets that must decode for a sample to count as audio.
const PACKETS_DECODED: usize = 4;
/// The budget's samples per second of it (all channels): 48 kHz stereo.
/// A sample of more channels or a higher rate is analysed for less time,
/// so its cost stays that of the budget in 48 kHz stereo.
pub(crate) const BUDGET_SAMPLES_PER_SECOND: f64 = 96_000.0;
/// Frames the resampler takes per call.
const RESAMPLER_CHUNK: usize = 1_024;

/// The figures of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Figures {
    /// Its whole length, analysed or not.
    pub(crate) duration_seconds: f64,
    /// Its sample rate, in Hz.
    pub(crate) sample_rate: u32,
    /// Its channels.
    pub(crate) channels: u32,
    /// How much of it (from its start) the figures below cover.
    pub(crate) analysed_seconds: f64,
    /// Seconds of speech.
    pub(crate) speech_seconds: f64,
    /// Integrated loudness (EBU R128), in LUFS; `None` for silence.
    pub(crate) loudness_lufs: Option<f64>,
    /// The highest true peak of any channel, in dBTP; `None` for silence.
    pub(crate) true_peak_dbtp: Option<f64>,
    /// The share of samples in clipped runs, 0 to 1.
    pub(crate) clipped_fraction: f64,
    /// Silence before the first frame that is not silent.
    pub(crate) leading_silence_seconds: f64,
    /// Silence after the last frame that is not silent.
    pub(crate) trailing_silence_seconds: f64,
    /// Silent frames anywhere, in seconds.
    pub(crate) silent_seconds: f64,
    /// The estimated signal-to-noise ratio, in dB; `None` without speech.
    pub(crate) snr_db: Option<f64>,
}

/// Decodes and measures `data`, analysing at most `budget` of its audio.
///
/// # Errors
/// Why it is not audio, in words for the caller: its container does not
/// open, it holds no audio track, its first packets do not decode, or its
/// sample rate is outside [`SAMPLE_RATES`].
pub(crate) fn analyse(format: Format, data: Bytes, budget: Duration) -> Result<Figures, String> {
    let mut reader = open(format, data)?;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or("it holds no audio track")?;
    let (track_id, params) = (track.id, track.codec_params.clone());
    let rate = params.sample_rate;
    let time_base = params
        .time_base
        .or_else(|| rate.map(|rate| TimeBase::new(1, rate)))
        .ok_or("its audio has no sample rate")?;
    // Opus has no decoder here: such samples are only demuxed.
    let mut decoder = if params.codec == CODEC_TYPE_OPUS {
        None
    } else {
        let rate = rate.ok_or("its audio has no sample rate")?;
        if !SAMPLE_RATES.contains(&rate) {
            return Err(format!(
                "its sample rate, {rate} Hz, is outside {} to {} Hz",
                SAMPLE_RATES.start(),
                SAMPLE_RATES.end()
            ));
        }
        Some(
            symphonia::default::get_codecs()
                .make(&params, &DecoderOptions::default())
                .map_err(|e| format!("its codec is not supported ({})", reason(&e)))?,
        )
    };
    let channels = params.channels.map_or(0, Channels::count);
    let mut meter: Option<Meter> = None;
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let (mut frames, mut packets) = (0u64, 0usize);
    loop {
        let packet = match reader.next_packet() {
            Ok(packet) => packet,
            Err(ParseError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("its audio is damaged ({})", reason(&e))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let within_budget = meter.as_ref().is_none_or(|m| m.within(budget));
        if let Some(decoder) = decoder.as_mut().filter(|_| within_budget) {
            match decoder.decode(&packet) {
                Ok(audio) => {
                    let spec = *audio.spec();
                    let fits = buffer
                        .as_ref()
                        .is_some_and(|b| b.capacity() >= audio.capacity() * spec.channels.count());
                    if !fits {
                        buffer = Some(SampleBuffer::new(audio.capacity() as u64, spec));
                    }
                    let buffer = buffer.as_mut().ok_or("no buffer")?;
                    buffer.copy_interleaved_ref(audio);
                    // Float formats can carry NaN and infinities; they mean nothing.
                    for value in buffer.samples_mut() {
                        if !value.is_finite() {
                            *value = 0.0;
                        }
                    }
                    if meter.is_none() {
                        meter = Some(Meter::new(spec.rate, spec.channels.count())?);
                    }
                    if let Some(meter) = meter.as_mut() {
                        meter.add(buffer.samples());
                    }
                }
                // The start must decode; later, a damaged packet is skipped
                // (as players do) rather than refusing the whole sample.
                Err(e) if packets < PACKETS_DECODED => {
                    return Err(format!("its audio does not decode ({})", reason(&e)));
                }
                Err(_) => {}
            }
        } else if packets >= PACKETS_DECODED
            && let Some(n_frames) = params.n_frames.filter(|_| decoder.is_none())
        {
            // Demuxed only, and the container says how long it is.
            frames = n_frames;
            break;
        }
        packets += 1;
        frames += packet.dur;
    }
    if packets == 0 {
        return Err("it holds no audio".into());
    }
    let time = time_base.calc_time(frames);
    let duration = Duration::from_secs(time.seconds) + Duration::from_secs_f64(time.frac);
    let mut figures = match meter {
        Some(meter) => meter.finish(),
        None => Figures::unanalysed(rate.unwrap_or_default(), channels),
    };
    figures.duration_seconds = duration.as_secs_f64();
    #[allow(clippy::cast_possible_truncation)] // at most 32 channels
    if figures.channels == 0 {
        figures.channels = channels as u32;
    }
    Ok(figures)
}

/// Opens `data`'s container as `format`.
fn open(format: Format, data: Bytes) -> Result<Box<dyn FormatReader>, String> {
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(data)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    hint.with_extension(format.extension());
    symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map(|probed| probed.format)
        .map_err(|e| format!("its container does not open ({})", reason(&e)))
}

/// A parse error in words, without symphonia's internals.
pub(super) fn reason(e: &ParseError) -> String {
    match e {
        ParseError::IoError(_) => "it ends too soon".into(),
        ParseError::DecodeError(what) | ParseError::Unsupported(what) => (*what).to_owned(),
        ParseError::SeekError(_) => "it cannot be read through".into(),
        ParseError::LimitError(what) => format!("a limit was hit: {what}"),
        ParseError::ResetRequired => "its stream changes midway".into(),
    }
}

impl Figures {
    /// How much of the analysis budget this sample used (see
    /// [`BUDGET_SAMPLES_PER_SECOND`]).
    pub(crate) fn budget_used(&self) -> Duration {
        let samples =
            self.analysed_seconds * f64::from(self.sample_rate) * f64::from(self.channels);
        Duration::from_secs_f64(
            self.analysed_seconds
                .max(samples / BUDGET_SAMPLES_PER_SECOND)
                .max(0.0),
        )
    }

    /// The figures of a sample that was not decoded (Opus).
    fn unanalysed(rate: u32, channels: usize) -> Self {
        Figures {
            duration_seconds: 0.0,
            sample_rate: rate,
            channels: u32::try_from(channels).unwrap_or(u32::MAX),
            analysed_seconds: 0.0,
            speech_seconds: 0.0,
            loudness_lufs: None,
            true_peak_dbtp: None,
            clipped_fraction: 0.0,
            leading_silence_seconds: 0.0,
            trailing_silence_seconds: 0.0,
            silent_seconds: 0.0,
            snr_db: None,
        }
    }
}

/// Measures decoded audio as it streams through.
struct Meter {
    rate: u32,
    channels: usize,
    loudness: EbuR128,
    /// Per channel, the length of the current run at [`CLIP_LEVEL`].
    runs: Vec<u32>,
    clipped: u64,
    /// Interleaved samples seen.
    samples: u64,
    /// Input frames seen (one sample per channel each).
    frames: u64,
    resampler: Option<Fft<f32>>,
    /// Mono input not yet resampled.
    pending: Vec<f32>,
    /// The resampler's output, reused.
    output: Vec<f32>,
    /// Mono at [`VAD_RATE`] not yet a whole frame.
    at_vad_rate: Vec<f32>,
    detector: Box<Detector>,
    /// Per frame: its mean power (measured at the input's own rate, so no
    /// band is lost to resampling) and whether it is speech.
    frame_powers: Vec<f32>,
    speech: Vec<bool>,
    /// The current frame's power so far, and its input samples so far.
    power_sum: f64,
    power_samples: u64,
}

impl Meter {
    fn new(rate: u32, channels: usize) -> Result<Self, String> {
        let count = u32::try_from(channels).map_err(|_| "it has too many channels")?;
        let loudness = EbuR128::new(count, rate, Mode::I | Mode::TRUE_PEAK)
            .map_err(|e| format!("its audio cannot be measured ({e})"))?;
        let resampler = if rate == VAD_RATE {
            None
        } else {
            Some(
                Fft::new(
                    rate as usize,
                    VAD_RATE as usize,
                    RESAMPLER_CHUNK,
                    1,
                    FixedSync::Input,
                )
                .map_err(|e| format!("its audio cannot be resampled ({e})"))?,
            )
        };
        let output = vec![0.0; resampler.as_ref().map_or(0, Resampler::output_frames_max)];
        Ok(Meter {
            rate,
            channels,
            loudness,
            runs: vec![0; channels],
            clipped: 0,
            samples: 0,
            frames: 0,
            resampler,
            pending: Vec::with_capacity(RESAMPLER_CHUNK * 2),
            output,
            at_vad_rate: Vec::with_capacity(FRAME * 2),
            detector: Detector::default_boxed(),
            frame_powers: Vec::new(),
            speech: Vec::new(),
            power_sum: 0.0,
            power_samples: 0,
        })
    }

    /// Whether less than `budget` has been measured (see [`BUDGET_SAMPLES_PER_SECOND`]).
    #[allow(clippy::cast_precision_loss)] // exact below 2^53 samples
    fn within(&self, budget: Duration) -> bool {
        let seconds = budget.as_secs_f64();
        self.analysed() < seconds && (self.samples as f64) < seconds * BUDGET_SAMPLES_PER_SECOND
    }

    /// Seconds of audio measured so far.
    #[allow(clippy::cast_precision_loss)] // exact below 2^53 frames
    fn analysed(&self) -> f64 {
        self.frames as f64 / f64::from(self.rate)
    }

    /// Measures interleaved samples.
    fn add(&mut self, interleaved: &[f32]) {
        if self.channels == 0 {
            return;
        }
        // Only fails on a length that is not whole frames, which
        // `SampleBuffer` never gives.
        let _ = self.loudness.add_frames_f32(interleaved);
        self.samples += interleaved.len() as u64;
        for frame in interleaved.chunks_exact(self.channels) {
            let mut mono = 0.0;
            for (value, run) in frame.iter().zip(&mut self.runs) {
                mono += value;
                if value.abs() >= CLIP_LEVEL {
                    *run += 1;
                    match (*run).cmp(&CLIP_RUN) {
                        std::cmp::Ordering::Equal => self.clipped += u64::from(CLIP_RUN),
                        std::cmp::Ordering::Greater => self.clipped += 1,
                        std::cmp::Ordering::Less => {}
                    }
                } else {
                    *run = 0;
                }
            }
            #[allow(clippy::cast_precision_loss)] // at most 32 channels
            let mono = mono / self.channels as f32;
            self.pending.push(mono);
            self.power_sum += f64::from(mono * mono);
            self.power_samples += 1;
            self.frames += 1;
            // Frame k ends where input sample k+1 frames of 16 ms end.
            let ends = self.frame_powers.len() as u64 + 1;
            if self.frames * u64::from(VAD_RATE) >= ends * FRAME as u64 * u64::from(self.rate) {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                self.frame_powers
                    .push((self.power_sum / self.power_samples as f64) as f32);
                self.power_sum = 0.0;
                self.power_samples = 0;
            }
        }
        self.resample(false);
    }

    /// Moves pending input through the resampler into whole frames; with
    /// `last`, also the remainder.
    fn resample(&mut self, last: bool) {
        let Some(resampler) = self.resampler.as_mut() else {
            self.at_vad_rate.append(&mut self.pending);
            self.frames_at_vad_rate();
            return;
        };
        let mut used = 0;
        loop {
            let left = self.pending.len() - used;
            let next = resampler.input_frames_next();
            if left < next && !(last && left > 0) {
                break;
            }
            let take = left.min(next);
            let mut indexing = Indexing::new();
            indexing.input_offset = used;
            if take < next {
                indexing.partial_len = Some(take);
            }
            let produced = InterleavedSlice::new(&self.pending[..], 1, self.pending.len())
                .ok()
                .and_then(|input| {
                    let capacity = self.output.len();
                    let mut output =
                        InterleavedSlice::new_mut(&mut self.output[..], 1, capacity).ok()?;
                    resampler
                        .process_into_buffer(&input, &mut output, Some(&indexing))
                        .ok()
                });
            let Some((_, out)) = produced else { break };
            used += take;
            self.at_vad_rate.extend_from_slice(&self.output[..out]);
        }
        self.pending.drain(..used);
        self.frames_at_vad_rate();
    }

    /// Scores and measures every whole frame at [`VAD_RATE`].
    fn frames_at_vad_rate(&mut self) {
        let whole = self.at_vad_rate.len() / FRAME * FRAME;
        for frame in self.at_vad_rate[..whole].chunks_exact_mut(FRAME) {
            // Resampling overshoots near full scale; the detector wants −1..1.
            for value in frame.iter_mut() {
                *value = value.clamp(-1.0, 1.0);
            }
            self.speech
                .push(self.detector.predict_f32(frame) >= SPEECH_SCORE);
        }
        self.at_vad_rate.drain(..whole);
    }

    fn finish(mut self) -> Figures {
        self.resample(true);
        let level = |db: f64| 10f64.powf(db / 10.0);
        let audible = |p: &f32| f64::from(*p) >= level(SILENCE_DBFS);
        let frames = self.frame_powers.len();
        let first = self.frame_powers.iter().position(audible).unwrap_or(frames);
        let last = self
            .frame_powers
            .iter()
            .rposition(audible)
            .map_or(0, |i| i + 1);
        let speech_frames = self.speech.iter().filter(|s| **s).count();
        let true_peak = (0..self.channels)
            .filter_map(|ch| self.loudness.true_peak(u32::try_from(ch).ok()?).ok())
            .fold(0f64, f64::max);
        #[allow(clippy::cast_precision_loss)]
        Figures {
            duration_seconds: 0.0,
            sample_rate: self.rate,
            channels: u32::try_from(self.channels).unwrap_or(u32::MAX),
            analysed_seconds: self.analysed(),
            speech_seconds: speech_frames as f64 * FRAME_SECONDS,
            loudness_lufs: self
                .loudness
                .loudness_global()
                .ok()
                .filter(|l| l.is_finite()),
            true_peak_dbtp: (true_peak > 0.0).then(|| 20.0 * true_peak.log10()),
            clipped_fraction: if self.samples == 0 {
                0.0
            } else {
                self.clipped as f64 / self.samples as f64
            },
            leading_silence_seconds: first as f64 * FRAME_SECONDS,
            trailing_silence_seconds: if first == frames {
                0.0
            } else {
                (frames - last) as f64 * FRAME_SECONDS
            },
            silent_seconds: self.frame_powers.iter().filter(|p| !audible(p)).count() as f64
                * FRAME_SECONDS,
            snr_db: snr(&self.frame_powers, &self.speech),
        }
    }
}

/// The estimated signal-to-noise ratio, in dB (see the module's definitions).
#[allow(clippy::cast_precision_loss)] // frame counts far below 2^52
fn snr(powers: &[f32], speech: &[bool]) -> Option<f64> {
    let speech_powers: Vec<f64> = powers
        .iter()
        .zip(speech)
        .filter(|(_, s)| **s)
        .map(|(p, _)| f64::from(*p))
        .collect();
    // Under a second of speech is too little to tell speech from noise.
    if (speech_powers.len() as f64) * FRAME_SECONDS < MIN_SNR_SPEECH_SECONDS {
        return None;
    }
    let signal = speech_powers.iter().sum::<f64>() / speech_powers.len() as f64;
    let mut sorted: Vec<f32> = powers.to_vec();
    sorted.sort_by(f32::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let at = ((sorted.len() - 1) as f64 * NOISE_PERCENTILE).round() as usize;
    let noise = f64::from(sorted[at]).max(NOISE_FLOOR_MIN);
    let clean = (signal - noise).max(NOISE_FLOOR_MIN);
    Some((10.0 * (clean / noise).log10()).min(MAX_SNR_DB))
}

#[cfg(test)]
mod tests {
    use super::{super::ANALYSED_AUDIO, *};

    const RATE: u32 = 44_100;

    /// A 16-bit PCM WAV of `samples` (−1..1) at `rate`, mono.
    fn wav(samples: &[f32], rate: u32) -> Bytes {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for v in samples {
            #[allow(clippy::cast_possible_truncation)]
            let v = (v.clamp(-1.0, 1.0) * 32_767.0).round() as i16;
            writer.write_sample(v).unwrap();
        }
        writer.finalize().unwrap();
        out.into_inner().into()
    }

    fn sine(seconds: f32, amplitude: f32) -> Vec<f32> {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let n = (seconds * RATE as f32) as usize;
        (0..n)
            .map(|i| {
                #[allow(clippy::cast_precision_loss)]
                let t = i as f32 / RATE as f32;
                (amplitude * (2.0 * std::f32::consts::PI * 1_000.0 * t).sin()).clamp(-1.0, 1.0)
            })
            .collect()
    }

    fn figures(samples: &[f32]) -> Figures {
        analyse(Format::Wav, wav(samples, RATE), ANALYSED_AUDIO).unwrap()
    }

    #[test]
    fn a_sine_has_the_loudness_and_peak_the_standard_gives_it() {
        // BS.1770: a full-scale 1 kHz sine in one channel reads −3.01 LUFS,
        // so one of peak 0.1 (−20 dBFS) reads −23.01.
        let f = figures(&sine(5.0, 0.1));
        let loudness = f.loudness_lufs.unwrap();
        assert!((loudness - -23.0).abs() < 0.3, "{f:?}");
        assert!((f.true_peak_dbtp.unwrap() - -20.0).abs() < 0.5, "{f:?}");
        assert!((f.duration_seconds - 5.0).abs() < 0.01, "{f:?}");
        assert!((f.analysed_seconds - 5.0).abs() < 0.01, "{f:?}");
        assert!(f.clipped_fraction < 1e-9, "{f:?}");
        assert!(
            f.leading_silence_seconds < 0.02 && f.trailing_silence_seconds < 0.05,
            "{f:?}"
        );
    }

    #[test]
    fn a_hard_clipped_sine_shows_its_flat_tops() {
        // Amplitude 2 clipped at full scale: |sin| ≥ 0.5 two thirds of the time.
        let f = figures(&sine(3.0, 2.0));
        assert!((f.clipped_fraction - 2.0 / 3.0).abs() < 0.02, "{f:?}");
        // Full scale, unclipped: only lone peaks, no flat runs.
        assert!(figures(&sine(3.0, 1.0)).clipped_fraction < 0.01);
    }

    #[test]
    fn silence_at_either_end_is_measured_and_the_budget_is_kept() {
        let mut samples = vec![0.0; RATE as usize * 2];
        samples.extend(sine(3.0, 0.3));
        samples.extend(vec![0.0; RATE as usize * 5]);
        let f = figures(&samples);
        assert!((f.leading_silence_seconds - 2.0).abs() < 0.1, "{f:?}");
        assert!((f.trailing_silence_seconds - 5.0).abs() < 0.1, "{f:?}");
        let cut = analyse(Format::Wav, wav(&samples, RATE), Duration::from_secs(3)).unwrap();
        assert!((cut.duration_seconds - 10.0).abs() < 0.01, "{cut:?}");
        assert!(
            cut.analysed_seconds >= 3.0 && cut.analysed_seconds < 3.5,
            "{cut:?}"
        );
    }

    #[test]
    fn a_higher_rate_gets_proportionally_less_of_the_budget() {
        // 192 kHz mono is two 48 kHz stereo's samples per second: a 3 s
        // budget covers 1.5 s of it, and uses all 3 s.
        let mut samples = Vec::new();
        let rate = 192_000;
        for i in 0..rate * 4 {
            #[allow(clippy::cast_precision_loss)]
            let t = i as f32 / rate as f32;
            samples.push(0.3 * (2.0 * std::f32::consts::PI * 1_000.0 * t).sin());
        }
        let f = analyse(Format::Wav, wav(&samples, rate), Duration::from_secs(3)).unwrap();
        assert!((f.duration_seconds - 4.0).abs() < 0.01, "{f:?}");
        assert!(
            f.analysed_seconds >= 1.5 && f.analysed_seconds < 1.7,
            "{f:?}"
        );
        assert!(
            f.budget_used() >= Duration::from_secs(3),
            "{:?}",
            f.budget_used()
        );
    }

    #[test]
    fn a_tone_is_not_speech_and_all_silence_has_no_level() {
        let f = figures(&sine(4.0, 0.3));
        assert!(f.speech_seconds < 0.5, "{f:?}");
        let quiet = figures(&vec![0.0; RATE as usize * 2]);
        assert_eq!(quiet.loudness_lufs, None, "{quiet:?}");
        assert_eq!(quiet.true_peak_dbtp, None, "{quiet:?}");
        assert!(
            (quiet.leading_silence_seconds - 2.0).abs() < 0.05,
            "{quiet:?}"
        );
    }

    #[test]
    fn an_odd_sample_rate_is_refused_with_its_figure() {
        let why = analyse(Format::Wav, wav(&sine(1.0, 0.1), 4_000), ANALYSED_AUDIO).unwrap_err();
        assert!(why.contains("4000 Hz"), "{why}");
    }

    #[test]
    fn the_snr_estimate_compares_speech_frames_with_the_noise_floor() {
        let mut powers = vec![1e-4f32; 20];
        let mut speech = vec![false; 20];
        powers.extend(vec![1e-2 + 1e-4; 80]);
        speech.extend(vec![true; 80]);
        let snr = snr(&powers, &speech).unwrap();
        assert!((snr - 20.0).abs() < 0.01, "{snr}");
        assert_eq!(super::snr(&powers, &[false; 100]), None);
        // Digital silence between words: the floor is −100 dBFS.
        let mut powers = vec![0.0f32; 10];
        powers.extend(vec![0.5; 90]);
        let speech: Vec<bool> = powers.iter().map(|p| *p > 0.0).collect();
        let clean = super::snr(&powers, &speech).unwrap();
        assert!((clean - 97.0).abs() < 0.1, "{clean}");
        // Under a second of speech: no estimate.
        assert_eq!(super::snr(&powers[..40], &speech[..40]), None);
    }
}
