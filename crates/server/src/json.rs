//! The JSON body extractor: 415 without a JSON content type, 413 over the size limit,
//! 400 `malformed_json` for syntax errors, 422 `validation_failed` naming the field for
//! data errors (unknown field, wrong type, missing field).

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON request body parsed into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        parse(&bytes).map(Json)
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as `T`, mapping errors to the API's 400/422 answers.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    // Trailing characters after the document are a syntax error too.
    de.end()
        .map_err(|e| ApiError::malformed_json(e.to_string(), e.line(), e.column()))?;
    Ok(value)
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::malformed_json(
            format!("malformed JSON: {inner}"),
            inner.line(),
            inner.column(),
        ),
        Category::Data => {
            let message = strip_position(&inner.to_string());
            // serde reports unknown and missing fields at the parent; name the field itself.
            let named = backticked(&message, "unknown field `")
                .or_else(|| backticked(&message, "missing field `"));
            let field = match named {
                // serde_path_to_error already has an unknown key in the path; a missing
                // one is reported at its parent.
                Some(name) if !(path == name || path.ends_with(&format!(".{name}"))) => {
                    join(&path, name)
                }
                _ => clean(&path),
            };
            ApiError::validation(field, message)
        }
    }
}

fn backticked<'a>(message: &'a str, lead: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(lead)?;
    rest.split('`').next()
}

fn clean(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

fn join(path: &str, name: &str) -> String {
    match clean(path).as_str() {
        "" => name.to_string(),
        p => format!("{p}.{name}"),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        external_id: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    fn field(e: &ApiError) -> String {
        e.body()
            .error
            .details
            .get("field")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn names_the_field() {
        let e = parse::<Outer>(br#"{"name":"a","bogus":1}"#).expect_err("unknown");
        assert_eq!(
            (e.code(), field(&e).as_str()),
            ("validation_failed", "bogus")
        );
        let e = parse::<Outer>(br#"{"name":"a","items":[{"external_id":"x","zz":1}]}"#)
            .expect_err("unknown");
        assert_eq!(field(&e), "items[0].zz");
        let e = parse::<Outer>(br#"{"name":5}"#).expect_err("type");
        assert_eq!(field(&e), "name");
        let e = parse::<Outer>(br#"{"items":[]}"#).expect_err("missing");
        assert_eq!(field(&e), "name");
        let e = parse::<Outer>(br#"{"name":"a","items":[{}]}"#).expect_err("missing");
        assert_eq!(field(&e), "items[0].external_id");
        let e = parse::<Outer>(b"{\"name\":").expect_err("syntax");
        assert_eq!(e.code(), "malformed_json");
        let e = parse::<Outer>(br#"{"name":"a"} x"#).expect_err("trailing");
        assert_eq!(e.code(), "malformed_json");
    }
}
