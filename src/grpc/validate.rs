//! Request checking for every RPC, in one place: each request is turned
//! into validated values before anything is read, written or sent to the
//! provider, and the first problem is reported as INVALID_ARGUMENT naming the
//! field by its path in the request (`samples[2].content_type`, `voice.name`,
//! `voice_ids[3]`).
//!
//! - CreateVoiceClone → [`NewVoice`]: name, description, language (BCP-47),
//!   gender, labels, visibility, request_id, and every sample (size, file
//!   name, content type agreeing with the data's format); then, once the
//!   audio check has parsed them, [`audio_verdicts`] (each is audio and
//!   lasts long enough).
//! - UpdateVoice → id and [`VoicePatch`]: `update_mask` paths and the fields
//!   they name, with the same limits as on create.
//! - GetVoice, DeleteVoice → `voice_id`, a UUID.
//! - ListUserVoices → page size (0 = default, above the maximum = maximum,
//!   negative refused), scope and status enums, and the page token, which
//!   must belong to the same caller, scope and status.
//! - WatchVoiceStatus → at most [`MAX_WATCHED`] voice ids, each a UUID,
//!   none named twice.
//!
//! Enum numbers outside the contract are refused, never mapped to a default.

use std::collections::{BTreeMap, HashMap};

use unicode_segmentation::UnicodeSegmentation;
use uuid::Uuid;

use super::page_token::Listing;
use crate::{
    audio::{self, CheckError, Format, MIN_SAMPLE_DURATION},
    error::Error,
    pb,
    provider::{AudioFile, RESERVED_LABELS},
    store::{ListQuery, Scope, Visibility, VoiceStatus},
    write_path::{AttestedConsent, NewIntake, NewVoice, Statement, VoicePatch},
};

pub(crate) const MAX_NAME_CHARS: usize = 100;
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 500;
pub(crate) const MAX_SAMPLES: usize = 25;
pub(crate) const MAX_SAMPLE_BYTES: usize = 10 * 1024 * 1024;
pub(crate) const MAX_TOTAL_SAMPLE_BYTES: usize = 50 * 1024 * 1024;
/// The largest CreateVoiceClone message: every sample byte allowed, plus room
/// for the other fields (bounded by the limits above) and protobuf framing.
pub(crate) const MAX_REQUEST_BYTES: usize = MAX_TOTAL_SAMPLE_BYTES + 64 * 1024;
pub(crate) const MAX_FILENAME_CHARS: usize = 255;
pub(crate) const MAX_LABELS: usize = 10;
pub(crate) const MAX_LABEL_KEY_CHARS: usize = 32;
pub(crate) const MAX_LABEL_VALUE_CHARS: usize = 64;
pub(crate) const MAX_GENDER_CHARS: usize = 32;
pub(crate) const MAX_REQUEST_ID_CHARS: usize = 64;
/// Page size when the request leaves it at 0.
pub(crate) const DEFAULT_PAGE_SIZE: u64 = 50;
/// Larger page sizes are lowered to this.
pub(crate) const MAX_PAGE_SIZE: u64 = 200;
/// Most voices one stream may watch by id.
pub(crate) const MAX_WATCHED: usize = 100;

/// A voice id from a request field.
///
/// # Errors
/// INVALID_ARGUMENT naming `field` when it is empty or not a UUID.
pub(crate) fn voice_id(field: &str, value: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// The query a ListUserVoices request asks for, and the listing its page
/// tokens belong to.
///
/// # Errors
/// INVALID_ARGUMENT naming `page_size`, `scope`, `status` or `page_token`.
pub(crate) fn list_request(
    caller: Uuid,
    request: pb::ListUserVoicesRequest,
) -> Result<(ListQuery, Listing), Error> {
    let pb::ListUserVoicesRequest {
        page_size,
        page_token,
        scope,
        status,
    } = request;
    let limit = match u64::try_from(page_size) {
        Err(_) => return Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
    };
    let listing = Listing {
        user: caller,
        scope: self::scope(scope)?,
        status: status_filter(status)?,
    };
    let query = ListQuery {
        caller,
        scope: listing.scope,
        status: listing.status,
        after: listing.decode(&page_token)?,
        limit,
    };
    Ok((query, listing))
}

/// The listing scope; UNSPECIFIED is OWNED.
fn scope(value: i32) -> Result<Scope, Error> {
    match pb::VoiceScope::try_from(value) {
        Ok(pb::VoiceScope::Unspecified | pb::VoiceScope::Owned) => Ok(Scope::Owned),
        Ok(pb::VoiceScope::Public) => Ok(Scope::Public),
        Ok(pb::VoiceScope::All) => Ok(Scope::All),
        Err(_) => Err(Error::invalid(
            "scope",
            format!("unknown VoiceScope value {value}"),
        )),
    }
}

/// The listing status filter; UNSPECIFIED is `None` (all but DELETED).
fn status_filter(value: i32) -> Result<Option<VoiceStatus>, Error> {
    match pb::VoiceStatus::try_from(value) {
        Ok(pb::VoiceStatus::Unspecified) => Ok(None),
        Ok(pb::VoiceStatus::Processing) => Ok(Some(VoiceStatus::Processing)),
        Ok(pb::VoiceStatus::Completed) => Ok(Some(VoiceStatus::Completed)),
        Ok(pb::VoiceStatus::Failed) => Ok(Some(VoiceStatus::Failed)),
        Ok(pb::VoiceStatus::Deleted) => {
            Err(Error::invalid("status", "deleted voices are not listed"))
        }
        Err(_) => Err(Error::invalid(
            "status",
            format!("unknown VoiceStatus value {value}"),
        )),
    }
}

/// The distinct voice ids a WatchVoiceStatus request names, in their order.
///
/// # Errors
/// INVALID_ARGUMENT for too many ids, one that is not a UUID, or one named
/// twice (a client bug worth hearing of, not silently folding).
pub(crate) fn watch_request(request: pb::WatchVoiceStatusRequest) -> Result<Vec<Uuid>, Error> {
    let pb::WatchVoiceStatusRequest { voice_ids } = request;
    if voice_ids.len() > MAX_WATCHED {
        return Err(Error::invalid(
            "voice_ids",
            format!("may name at most {MAX_WATCHED} voices"),
        ));
    }
    let mut ids = Vec::with_capacity(voice_ids.len());
    for (i, raw) in voice_ids.iter().enumerate() {
        let id = Uuid::parse_str(raw)
            .map_err(|_| Error::invalid(format!("voice_ids[{i}]"), "must be a UUID"))?;
        if let Some(first) = ids.iter().position(|seen| *seen == id) {
            return Err(Error::invalid(
                format!("voice_ids[{i}]"),
                format!("names the same voice as voice_ids[{first}]"),
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// # Errors
/// INVALID_ARGUMENT naming the first bad field.
/// Everything but whether the samples are audio: that needs their parse,
/// in a bounded child process ([`audio::Checker`]), judged by
/// [`audio_verdicts`].
pub(crate) fn create_request(
    request: pb::CreateVoiceCloneRequest,
    require_consent: bool,
) -> Result<(NewVoice, Vec<audio::Sample>), Error> {
    let pb::CreateVoiceCloneRequest {
        name,
        description,
        samples,
        visibility,
        labels,
        language,
        gender,
        request_id,
        remove_background_noise,
        consent,
    } = request;
    let (samples, to_check) = self::samples(samples)?;
    let consent = match consent {
        Some(consent) => Some(self::consent(consent)?),
        None if require_consent => {
            return Err(Error::invalid(
                "consent",
                "is required: the speaker's name, the basis and the statement the user confirmed",
            ));
        }
        None => None,
    };
    let new = NewVoice {
        name: self::name("name", &name)?,
        description: self::description("description", &description)?,
        language: self::language(&language)?,
        gender: self::gender(&gender)?,
        labels: self::labels("labels", labels)?,
        visibility: match pb::Visibility::try_from(visibility) {
            Ok(pb::Visibility::Unspecified | pb::Visibility::Private) => Visibility::Private,
            Ok(pb::Visibility::Public) => Visibility::Public,
            Err(_) => {
                return Err(Error::invalid(
                    "visibility",
                    format!("unknown Visibility value {visibility}"),
                ));
            }
        },
        request_id: self::request_id(&request_id)?,
        samples,
        remove_background_noise,
        intake: NewIntake {
            consent,
            ..NewIntake::default()
        },
    };
    Ok((new, to_check))
}

/// The most characters of a consent's speaker name.
const MAX_SPEAKER_NAME_CHARS: usize = 200;
/// The most characters of a consent statement's text.
const MAX_STATEMENT_CHARS: usize = 4000;

/// # Errors
/// INVALID_ARGUMENT naming the first bad field of `consent`.
fn consent(consent: pb::Consent) -> Result<AttestedConsent, Error> {
    let speaker_name = text(
        "consent.speaker_name",
        &consent.speaker_name,
        MAX_SPEAKER_NAME_CHARS,
    )?;
    let basis = pb::ConsentBasis::try_from(consent.basis)
        .ok()
        .and_then(|basis| pb::CONSENT_BASES.iter().find(|(b, _)| *b == basis))
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            Error::invalid(
                "consent.basis",
                "is required: SPEAKER_IS_CALLER, SPEAKER_PERMISSION or LICENSED",
            )
        })?;
    let statement = match consent.statement {
        Some(pb::consent::Statement::StatementText(value)) => {
            Statement::Text(text("consent.statement_text", &value, MAX_STATEMENT_CHARS)?)
        }
        Some(pb::consent::Statement::StatementRef(reference)) => Statement::Published {
            id: token("consent.statement_ref.id", &reference.id, 100)?,
            version: token("consent.statement_ref.version", &reference.version, 50)?,
        },
        None => {
            return Err(Error::invalid(
                "consent.statement",
                "is required: statement_text or statement_ref",
            ));
        }
    };
    let evidence = consent.evidence_sha256.trim().to_ascii_lowercase();
    let evidence_sha256 = if evidence.is_empty() {
        None
    } else if evidence.len() == 64 && evidence.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(evidence)
    } else {
        return Err(Error::invalid(
            "consent.evidence_sha256",
            "must be a SHA-256: 64 hexadecimal digits",
        ));
    };
    if consent.recorded_at.is_some() {
        return Err(Error::invalid(
            "consent.recorded_at",
            "is output only: voicehub sets it",
        ));
    }
    Ok(AttestedConsent {
        speaker_name,
        basis,
        statement,
        evidence_sha256,
    })
}

/// Free text of 1 to `max` characters after trimming, no control characters.
fn text(field: &'static str, value: &str, max: usize) -> Result<String, Error> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > max {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(field, "must not hold control characters"));
    }
    Ok(trimmed.to_owned())
}

/// 1 to `max` of `[A-Za-z0-9._-]`.
fn token(field: &'static str, value: &str, max: usize) -> Result<String, Error> {
    let ok = (1..=max).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!("must be 1 to {max} of A-Z, a-z, 0-9, '.', '_' and '-'"),
        ))
    }
}

/// # Errors
/// INVALID_ARGUMENT naming the first bad sample field.
/// The samples of an AnalyzeSamples request: their filenames, and the
/// samples as handed to the check.
pub(crate) fn analyze_request(
    request: pb::AnalyzeSamplesRequest,
) -> Result<(Vec<String>, Vec<audio::Sample>), Error> {
    let (files, samples) = samples(request.samples)?;
    Ok((files.into_iter().map(|f| f.filename).collect(), samples))
}

/// The audio check's answer for `samples`, as the caller should hear it.
///
/// # Errors
/// INVALID_ARGUMENT naming `samples[i].data` for a sample that is not audio,
/// broke a bound of the check, or is too short; UNAVAILABLE if the check
/// could not run.
pub(crate) fn audio_verdicts(
    samples: &[audio::Sample],
    verdicts: Result<Vec<audio::Figures>, CheckError>,
) -> Result<Vec<audio::Figures>, Error> {
    let field = |i: usize| format!("samples[{i}].data");
    let figures = verdicts.map_err(|e| match e {
        CheckError::Refused { index, why } => Error::invalid(
            field(index),
            format!("is not {} audio: {why}", samples[index].format.name()),
        ),
        CheckError::Failed(detail) => Error::Unavailable {
            what: "the audio check",
            detail,
        },
    })?;
    for (i, figures) in figures.iter().enumerate() {
        let duration = std::time::Duration::from_secs_f64(figures.duration_seconds);
        if duration < MIN_SAMPLE_DURATION {
            return Err(Error::invalid(
                field(i),
                format!(
                    "holds {:.2} s of audio; a sample needs at least {} s",
                    duration.as_secs_f64(),
                    MIN_SAMPLE_DURATION.as_secs()
                ),
            ));
        }
    }
    Ok(figures)
}

/// The update paths UpdateVoice accepts.
const UPDATE_PATHS: [&str; 4] = ["name", "description", "visibility", "labels"];

/// # Errors
/// INVALID_ARGUMENT naming the first bad field (`update_mask`, `voice.*`).
/// The paths of an update's mask, which must name at least one of `allowed`.
pub(crate) fn mask_paths(
    mask: Option<prost_types::FieldMask>,
    allowed: &[&str],
) -> Result<Vec<String>, Error> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            format!("must name at least one of {}", allowed.join(", ")),
        ));
    }
    Ok(paths)
}

/// The refusal of a mask path that is not one of `allowed`.
pub(crate) fn unknown_path(path: &str, allowed: &[&str]) -> Error {
    Error::invalid(
        "update_mask",
        format!(
            "path {path:?} cannot be updated; allowed: {}",
            allowed.join(", ")
        ),
    )
}

pub(crate) fn update_request(request: pb::UpdateVoiceRequest) -> Result<(Uuid, VoicePatch), Error> {
    let voice = request
        .voice
        .ok_or_else(|| Error::invalid("voice", "is required"))?;
    let id = voice_id("voice.voice_id", &voice.voice_id)?;
    let mut patch = VoicePatch::default();
    for path in mask_paths(request.update_mask, &UPDATE_PATHS)? {
        match path.as_str() {
            "name" => patch.name = Some(name("voice.name", &voice.name)?),
            "description" => {
                patch.description = Some(description("voice.description", &voice.description)?);
            }
            "visibility" => {
                patch.visibility = Some(match pb::Visibility::try_from(voice.visibility) {
                    Ok(pb::Visibility::Private) => Visibility::Private,
                    Ok(pb::Visibility::Public) => Visibility::Public,
                    _ => {
                        return Err(Error::invalid(
                            "voice.visibility",
                            "must be VISIBILITY_PRIVATE or VISIBILITY_PUBLIC",
                        ));
                    }
                });
            }
            "labels" => patch.labels = Some(labels("voice.labels", voice.labels.clone())?),
            other => return Err(unknown_path(other, &UPDATE_PATHS)),
        }
    }
    Ok((id, patch))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn name(field: &'static str, value: &str) -> Result<String, Error> {
    let name = value.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(Error::invalid(field, "is required"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    // Judged by what a reader sees, one grapheme cluster (a user-perceived
    // character) at a time: an emoji joined with U+200D (👩‍💻) or a flag
    // spelled with tag characters (🏴󠁧󠁢󠁳󠁣󠁴󠁿) is one symbol; the same characters
    // anywhere else hide something.
    if !name.graphemes(true).all(shows_as_it_is) {
        return Err(Error::invalid(
            field,
            "must not contain control, format (bidirectional or zero-width), private-use or \
             unassigned characters, nor line separators",
        ));
    }
    if !name.chars().any(|c| visible(c) && !blank(c)) {
        return Err(Error::invalid(field, "must contain a visible character"));
    }
    Ok(name.to_owned())
}

/// Whether a grapheme cluster of a name shows as what it holds: nothing
/// hidden in it, unless it is an emoji sequence (a symbol followed by
/// zero-width joiners and the tag characters of a subdivision flag).
fn shows_as_it_is(cluster: &str) -> bool {
    let mut chars = cluster.chars();
    let Some(first) = chars.next() else {
        return true;
    };
    let emoji = {
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        first.general_category() == GeneralCategory::OtherSymbol
    };
    !hidden(first) && chars.all(|c| !hidden(c) || (emoji && (c == ZERO_WIDTH_JOINER || is_tag(c))))
}

const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// A Unicode tag character (U+E0020..U+E007F): spells subdivision flags.
fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007F}').contains(&c)
}

/// A letter or symbol that renders as blank space: a name of only these
/// looks empty (Hangul fillers, the blank Braille pattern).
fn blank(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
    )
}

/// A character that changes how a name shows without showing itself, or
/// shows nothing reliable: controls, format characters (bidirectional
/// overrides such as U+202E, zero-width characters, the BOM, tag
/// characters), private-use and unassigned code points, line and paragraph
/// separators. A name that holds one can impersonate another.
fn hidden(c: char) -> bool {
    use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
    c.general_category_group() == GeneralCategoryGroup::Other
        || matches!(
            c.general_category(),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
        )
}

/// A character that shows: a letter, number, punctuation or symbol.
fn visible(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter
            | GeneralCategoryGroup::Number
            | GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
    )
}

pub(crate) fn description(field: &'static str, value: &str) -> Result<String, Error> {
    let description = value.trim();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    // Line breaks and tabs are text; other hidden characters are not.
    if description
        .chars()
        .any(|c| hidden(c) && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Error::invalid(
            field,
            "must not contain control (but line breaks and tabs), format (bidirectional or \
             zero-width), private-use or unassigned characters",
        ));
    }
    Ok(description.to_owned())
}

fn gender(value: &str) -> Result<String, Error> {
    let gender = value.trim();
    if gender.chars().count() > MAX_GENDER_CHARS || gender.chars().any(hidden) {
        return Err(Error::invalid(
            "gender",
            format!(
                "must be at most {MAX_GENDER_CHARS} characters without control, format, \
                 private-use or unassigned characters"
            ),
        ));
    }
    Ok(gender.to_owned())
}

/// A BCP-47 tag (parsed by `oxilangtag`) of the shape the provider's
/// language labels use: language (2–3 letters), optional script, optional
/// region, e.g. `en`, `ko`, `pt-BR`, `zh-Hant-TW`; no extended language,
/// variant, extension or private-use subtags. Returned in canonical case.
fn language(value: &str) -> Result<String, Error> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let tag = oxilangtag::LanguageTag::parse_and_normalize(value)
        .ok()
        .filter(|tag| {
            (2..=3).contains(&tag.primary_language().len())
                && tag.extended_language().is_none()
                && tag.variant().is_none()
                && tag.extension().is_none()
                && tag.private_use().is_none()
        })
        .ok_or_else(|| {
            Error::invalid(
                "language",
                "must be a BCP-47 language tag such as en, ko or pt-BR",
            )
        })?;
    Ok(tag.into_inner())
}

fn labels(
    field: &'static str,
    labels: HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            field,
            format!("must hold at most {MAX_LABELS} labels"),
        ));
    }
    // Sorted, so the same request always reports the same first problem.
    let labels: BTreeMap<String, String> = labels.into_iter().collect();
    for (key, value) in &labels {
        let key_ok = (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!("label keys must match [a-z0-9_]{{1,{MAX_LABEL_KEY_CHARS}}}"),
            ));
        }
        if RESERVED_LABELS.contains(&key.as_str()) {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!("the label key {key} is reserved for voicehub's own use"),
            ));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS || value.chars().any(hidden) {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!(
                    "label values must be at most {MAX_LABEL_VALUE_CHARS} characters without control, \
                     format (bidirectional or zero-width), private-use or unassigned characters"
                ),
            ));
        }
    }
    Ok(labels)
}

fn request_id(value: &str) -> Result<Option<String>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_REQUEST_ID_CHARS
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_CHARS} of [A-Za-z0-9_-]"),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// The samples as sent on to the provider, and as handed to the check.
fn samples(samples: Vec<pb::AudioSample>) -> Result<(Vec<AudioFile>, Vec<audio::Sample>), Error> {
    if samples.is_empty() || samples.len() > MAX_SAMPLES {
        return Err(Error::invalid(
            "samples",
            format!("must hold 1 to {MAX_SAMPLES} audio samples"),
        ));
    }
    let total: usize = samples.iter().map(|s| s.data.len()).sum();
    if total > MAX_TOTAL_SAMPLE_BYTES {
        return Err(Error::invalid(
            "samples",
            "must hold at most 50 MiB of audio in all",
        ));
    }
    samples
        .into_iter()
        .enumerate()
        .map(|(i, pb::AudioSample { filename, content_type, data })| {
            let field = |name: &str| format!("samples[{i}].{name}");
            let chars = filename.chars().count();
            if chars == 0 || chars > MAX_FILENAME_CHARS {
                return Err(Error::invalid(field("filename"), format!("must be 1 to {MAX_FILENAME_CHARS} characters")));
            }
            if filename.contains(['/', '\\']) || has_control(&filename) || filename == "." || filename == ".." {
                return Err(Error::invalid(
                    field("filename"),
                    "must be a plain file name, without path separators or control characters",
                ));
            }
            if data.is_empty() || data.len() > MAX_SAMPLE_BYTES {
                return Err(Error::invalid(field("data"), "must be 1 byte to 10 MiB"));
            }
            let declared = Format::from_content_type(&content_type).ok_or_else(|| {
                Error::invalid(
                    field("content_type"),
                    format!("{content_type:?} is not a supported audio type (WAV, MP3, OGG/Opus, FLAC, M4A/MP4 audio, WebM)"),
                )
            })?;
            let detected = Format::sniff(&data).ok_or_else(|| {
                Error::invalid(field("data"), "is not audio in a supported format (WAV, MP3, OGG/Opus, FLAC, M4A/MP4, WebM)")
            })?;
            if declared != detected {
                return Err(Error::invalid(
                    field("content_type"),
                    format!("says {} but the data is {}", declared.name(), detected.name()),
                ));
            }
            tracing::debug!(sample = i, filename, format = declared.name(), "sample recognised");
            let check = audio::Sample {
                format: declared,
                data: data.clone(),
            };
            Ok((
                AudioFile {
                    filename,
                    content_type: declared.canonical_content_type().to_owned(),
                    data,
                },
                check,
            ))
        })
        .collect::<Result<Vec<_>, Error>>()
        .map(|pairs| pairs.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags_are_checked_and_canonicalised() {
        for (input, expected) in [
            ("en", "en"),
            ("KO", "ko"),
            ("pt-br", "pt-BR"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("es-419", "es-419"),
            ("", ""),
        ] {
            assert_eq!(language(input).unwrap(), expected, "{input}");
        }
        for bad in [
            "e",
            "english",
            "en-",
            "en-USA1",
            "12",
            "en-US-x",
            "pt_BR",
            "de-CH-1901",
            "zh-yue",
            "en-US-u-ca-gregory",
            "x-private",
            "en-x-private",
        ] {
            assert!(language(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", "  Ada  ").unwrap(), "Ada");
        assert!(name("name", "   ").is_err());
        assert!(name("name", &"x".repeat(101)).is_err());
        assert!(name("name", &"é".repeat(100)).is_ok());
        assert!(name("name", "a\u{7}b").is_err());
    }

    #[test]
    fn names_must_show_and_hide_nothing() {
        for bad in [
            "\u{3164}",                  // HANGUL FILLER: shows as blank
            "\u{2800}\u{2800}",          // BRAILLE PATTERN BLANK
            "\u{115F}\u{1160} \u{FFA0}", // more Hangul fillers, and a space
            "a\u{200D}b",                // a zero-width joiner between letters
            "\u{E0067}\u{E0062}",        // tag characters with no flag to spell
            "\u{200B}",                  // zero-width space only
            "\u{200B}\u{200C}\u{200D}",  // zero-width characters only
            "\u{FEFF}",                  // byte order mark only
            "\u{200E}\u{200F}",          // direction marks only
            "abc\u{202E}fdp.exe",        // right-to-left override
            "a\u{2066}b\u{2069}",        // bidirectional isolates
            "line\u{2028}break",         // line separator
            "para\u{2029}graph",         // paragraph separator
            "tag\u{E0041}\u{E007F}",     // Unicode tag characters
            "private\u{E000}",           // private use
            "\u{0301}\u{0301}",          // combining marks with nothing to mark
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
        for good in [
            "Ada",
            "Zoë",
            "東京",
            "Ølo-2 (beta)",
            "🎙️ Narrator",
            "مرحبا",
            "👩\u{200D}💻 coder",     // emoji ZWJ sequence
            "👨\u{200D}👩\u{200D}👧", // family
            "🏳\u{FE0F}\u{200D}🌈",    // rainbow flag
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}", // Scotland (tag flag)
            "Ada \u{3164}",           // a filler beside a letter
        ] {
            assert_eq!(name("name", good).unwrap(), good, "{good:?}");
        }
    }
}
