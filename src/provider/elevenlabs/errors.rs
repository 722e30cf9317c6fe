//! ElevenLabs error bodies, read in all three shapes the API sends, and
//! classified by what the caller can do about them (`docs/elevenlabs.md`,
//! "Error answers").

use reqwest::StatusCode;
use serde_json::Value;

use crate::provider::ProviderError;

/// What an error body says, whichever of ElevenLabs' shapes it has.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorBody {
    code: Option<String>,
    message: String,
    field: Option<&'static str>,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Self {
        let fallback = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return ErrorBody {
                message: fallback(),
                ..Default::default()
            };
        };
        match &json["detail"] {
            Value::Object(detail) => {
                let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
                ErrorBody {
                    // `code` is the current name; `status` the legacy one still sent.
                    code: text("code").or_else(|| text("status")),
                    message: text("message").unwrap_or_else(fallback),
                    field: text("param").as_deref().and_then(our_field),
                }
            }
            Value::Array(items) => ErrorBody {
                code: None,
                message: items
                    .iter()
                    .filter_map(|i| i["msg"].as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                // FastAPI's loc is ["body", "<field>", ...].
                field: items
                    .iter()
                    .find_map(|i| i["loc"].get(1)?.as_str().and_then(our_field)),
            },
            Value::String(message) => ErrorBody {
                code: None,
                message: message.clone(),
                field: None,
            },
            _ => ErrorBody {
                message: fallback(),
                ..Default::default()
            },
        }
    }
}

/// Our request field for an ElevenLabs form field.
fn our_field(theirs: &str) -> Option<&'static str> {
    match theirs {
        "files" => Some("samples"),
        "name" => Some("name"),
        "description" => Some("description"),
        "labels" => Some("labels"),
        "remove_background_noise" => Some("remove_background_noise"),
        _ => None,
    }
}

pub(super) fn classify(status: StatusCode, body: &[u8]) -> ProviderError {
    let ErrorBody {
        code,
        message,
        field,
    } = ErrorBody::parse(body);
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    match (status.as_u16(), code.as_deref()) {
        (_, Some("voice_limit_reached" | "quota_exceeded")) => ProviderError::LimitReached(message),
        (404, _) | (_, Some("voice_not_found" | "voice_does_not_exist")) => ProviderError::NotFound,
        (401, _) | (_, Some("invalid_api_key" | "missing_permissions")) => {
            ProviderError::Unauthorized(message)
        }
        (429 | 500..=599, _) => ProviderError::Unavailable(message),
        (400..=499, _) => ProviderError::Rejected { field, message },
        _ => ProviderError::Protocol(format!("HTTP {status}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_in_all_three_shapes() {
        let object = br#"{"detail":{"status":"voice_limit_reached","message":"maximum amount of custom voices (10 / 10)"}}"#;
        assert_eq!(
            ErrorBody::parse(object),
            ErrorBody {
                code: Some("voice_limit_reached".into()),
                message: "maximum amount of custom voices (10 / 10)".into(),
                field: None
            }
        );
        let new_style = br#"{"detail":{"type":"validation_error","code":"invalid_parameters","status":"legacy","message":"bad","param":"name"}}"#;
        let parsed = ErrorBody::parse(new_style);
        assert_eq!(parsed.code.as_deref(), Some("invalid_parameters"));
        assert_eq!(parsed.field, Some("name"));
        let array = br#"{"detail":[{"loc":["body","files",0],"msg":"Expected UploadFile, received: <class 'str'>","type":"value_error"}]}"#;
        let parsed = ErrorBody::parse(array);
        assert_eq!(parsed.field, Some("samples"));
        assert!(parsed.message.contains("Expected UploadFile"));
        assert_eq!(
            ErrorBody::parse(br#"{"detail":"Not Found"}"#).message,
            "Not Found"
        );
        assert_eq!(
            ErrorBody::parse(b"<html>502</html>").message,
            "<html>502</html>"
        );
    }

    #[test]
    fn errors_are_classified_by_what_the_caller_can_do() {
        let body = |code: &str| {
            format!(r#"{{"detail":{{"status":"{code}","message":"m"}}}}"#).into_bytes()
        };
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &body("voice_limit_reached")),
            ProviderError::LimitReached("m".into())
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &body("quota_exceeded")),
            ProviderError::LimitReached("m".into())
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &body("voice_not_found")),
            ProviderError::NotFound
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &body("voice_does_not_exist")),
            ProviderError::NotFound
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, b"{}"),
            ProviderError::NotFound
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &body("invalid_api_key")),
            ProviderError::Unauthorized("m".into())
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &body("missing_permissions")),
            ProviderError::Unauthorized("m".into())
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &body("system_busy")),
            ProviderError::Unavailable("m".into())
        );
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, &body("only_for_creator+")),
            ProviderError::Rejected { .. }
        ));
    }
}
