//! A contact's profile and the rules each profile attribute obeys.

use crate::ValidationError;
use serde::{Deserialize, Serialize};

/// Longest accepted name, username or source (characters).
pub const MAX_SHORT_TEXT: usize = 200;

/// What we know about a person, regardless of channel. Every attribute is optional:
/// a Telegram user may share only a first name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Messenger username, without `@`.
    pub username: Option<String>,
    /// Preferred language as a BCP 47 tag (`ru`, `en-GB`).
    pub language: Option<String>,
    /// IANA time zone (`Europe/Moscow`), used for quiet hours and local-time sending.
    pub time_zone: Option<String>,
    /// Phone number in E.164 form (`+79161234567`).
    pub phone: Option<String>,
    /// E-mail address (domain lower-cased).
    pub email: Option<String>,
    /// URL of the contact's picture.
    pub avatar_url: Option<String>,
}

impl Profile {
    /// Attribute names in storage order, as reported in `profile_updated` and
    /// `contact_imported` events.
    pub const ATTRIBUTES: [&'static str; 8] = [
        "first_name",
        "last_name",
        "username",
        "language",
        "time_zone",
        "phone",
        "email",
        "avatar_url",
    ];

    /// The attributes in [`Profile::ATTRIBUTES`] order.
    pub fn values(&self) -> [&Option<String>; 8] {
        [
            &self.first_name,
            &self.last_name,
            &self.username,
            &self.language,
            &self.time_zone,
            &self.phone,
            &self.email,
            &self.avatar_url,
        ]
    }

    /// Mutable access to the attributes in [`Profile::ATTRIBUTES`] order.
    pub fn values_mut(&mut self) -> [&mut Option<String>; 8] {
        [
            &mut self.first_name,
            &mut self.last_name,
            &mut self.username,
            &mut self.language,
            &mut self.time_zone,
            &mut self.phone,
            &mut self.email,
            &mut self.avatar_url,
        ]
    }

    /// Checks and normalises every attribute; errors name the attribute.
    pub fn validated(self) -> Result<Profile, ValidationError> {
        Ok(Profile {
            first_name: opt(self.first_name, |v| short_text("first_name", v))?,
            last_name: opt(self.last_name, |v| short_text("last_name", v))?,
            username: opt(self.username, |v| {
                short_text("username", v.trim_start_matches('@').to_string())
            })?,
            language: opt(self.language, language)?,
            time_zone: opt(self.time_zone, time_zone)?,
            phone: opt(self.phone, phone)?,
            email: opt(self.email, email)?,
            avatar_url: opt(self.avatar_url, avatar_url)?,
        })
    }

    /// A display name: "First Last", the username, or the phone/e-mail as a last resort.
    pub fn display_name(&self) -> Option<String> {
        let full: Vec<&str> = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if !full.is_empty() {
            return Some(full.join(" "));
        }
        self.username
            .clone()
            .or_else(|| self.phone.clone())
            .or_else(|| self.email.clone())
    }
}

/// A partial update of a profile: an absent key leaves the attribute alone, `null`
/// clears it, a value replaces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    /// New given name (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub first_name: Option<Option<String>>,
    /// New family name (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub last_name: Option<Option<String>>,
    /// New username (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub username: Option<Option<String>>,
    /// New language (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub language: Option<Option<String>>,
    /// New time zone (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<Option<String>>,
    /// New phone (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    /// New e-mail (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    /// New avatar URL (`null` clears).
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
}

fn patch<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

impl ProfilePatch {
    /// Applies the patch to `current`, validating the result.
    pub fn apply(self, current: &Profile) -> Result<Profile, ValidationError> {
        fn pick(p: Option<Option<String>>, cur: &Option<String>) -> Option<String> {
            match p {
                Some(v) => v,
                None => cur.clone(),
            }
        }
        Profile {
            first_name: pick(self.first_name, &current.first_name),
            last_name: pick(self.last_name, &current.last_name),
            username: pick(self.username, &current.username),
            language: pick(self.language, &current.language),
            time_zone: pick(self.time_zone, &current.time_zone),
            phone: pick(self.phone, &current.phone),
            email: pick(self.email, &current.email),
            avatar_url: pick(self.avatar_url, &current.avatar_url),
        }
        .validated()
    }

    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ProfilePatch::default()
    }
}

fn opt(
    v: Option<String>,
    f: impl FnOnce(String) -> Result<String, ValidationError>,
) -> Result<Option<String>, ValidationError> {
    match v {
        None => Ok(None),
        // An empty string means "not known", like an empty CSV cell.
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => f(s).map(Some),
    }
}

fn short_text(field: &str, v: String) -> Result<String, ValidationError> {
    let v = v.trim().to_string();
    if v.chars().count() > MAX_SHORT_TEXT {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_SHORT_TEXT} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v)
}

/// Normalises a phone number to E.164 (`+` and 8–15 digits). Spaces, dashes, dots and
/// brackets are dropped; a number without `+` is taken as already international.
pub fn phone(v: String) -> Result<String, ValidationError> {
    let t = v.trim();
    let (plus, rest) = match t.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let mut digits = String::with_capacity(16);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(ValidationError::new(
                    "phone",
                    format!("`{t}` is not a phone number (only digits, spaces, dashes and brackets allowed)"),
                ))
            }
        }
    }
    let _ = plus;
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(ValidationError::new(
            "phone",
            format!("`{t}` is not an international phone number (expected + and 8 to 15 digits, e.g. +79161234567)"),
        ));
    }
    Ok(format!("+{digits}"))
}

/// Checks the shape of an e-mail address and lower-cases its domain.
pub fn email(v: String) -> Result<String, ValidationError> {
    let t = v.trim();
    let bad = || ValidationError::new("email", format!("`{t}` is not an e-mail address"));
    if t.len() > 254 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.contains('@')
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(bad());
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

/// Checks a BCP 47-style language tag (`ru`, `en-GB`, `pt_BR` → `pt-BR`).
pub fn language(v: String) -> Result<String, ValidationError> {
    let t = v.trim().replace('_', "-");
    let mut parts = t.split('-');
    let primary = parts.next().unwrap_or_default();
    let ok_primary =
        (2..=3).contains(&primary.len()) && primary.chars().all(|c| c.is_ascii_alphabetic());
    let ok_rest =
        parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !ok_primary || !ok_rest {
        return Err(ValidationError::new(
            "language",
            format!("`{t}` is not a language tag (expected e.g. `ru` or `en-GB`)"),
        ));
    }
    let mut out = primary.to_lowercase();
    for (i, p) in t.split('-').skip(1).enumerate() {
        out.push('-');
        if i == 0 && p.len() == 2 {
            out.push_str(&p.to_uppercase());
        } else {
            out.push_str(p);
        }
    }
    Ok(out)
}

/// Checks that a time zone is a known IANA name.
pub fn time_zone(v: String) -> Result<String, ValidationError> {
    let t = v.trim();
    match jiff::tz::TimeZone::get(t) {
        Ok(_) => Ok(t.to_string()),
        Err(_) => Err(ValidationError::new(
            "time_zone",
            format!(
                "`{t}` is not a known time zone (expected an IANA name such as `Europe/Moscow`)"
            ),
        )),
    }
}

/// Checks that an avatar URL is an absolute http(s) URL.
pub fn avatar_url(v: String) -> Result<String, ValidationError> {
    let t = v.trim();
    match url::Url::parse(t) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && t.len() <= 2048 => Ok(t.to_string()),
        _ => Err(ValidationError::new(
            "avatar_url",
            format!("`{t}` is not an http(s) URL"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_normalises() {
        assert_eq!(
            phone("+7 (916) 123-45-67".into()).as_deref(),
            Ok("+79161234567")
        );
        assert_eq!(phone("79161234567".into()).as_deref(), Ok("+79161234567"));
        assert!(phone("123".into()).is_err());
        assert!(phone("+7 916 abc".into()).is_err());
    }

    #[test]
    fn email_checks_shape() {
        assert_eq!(
            email("Ivan@Example.RU".into()).as_deref(),
            Ok("Ivan@example.ru")
        );
        for bad in ["ivan", "ivan@", "@x.ru", "a b@x.ru", "a@x", "a@.ru"] {
            assert!(email(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn language_and_time_zone() {
        assert_eq!(language("en_gb".into()).as_deref(), Ok("en-GB"));
        assert!(language("english!".into()).is_err());
        assert!(time_zone("Europe/Moscow".into()).is_ok());
        assert!(time_zone("Mars/Olympus".into()).is_err());
    }

    #[test]
    fn profile_errors_name_the_field() {
        let p = Profile {
            email: Some("nope".into()),
            ..Profile::default()
        };
        assert_eq!(p.validated().map_err(|e| e.field), Err("email".to_string()));
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let cur = Profile {
            first_name: Some("Ivan".into()),
            phone: Some("+79161234567".into()),
            ..Profile::default()
        };
        let p: ProfilePatch =
            serde_json::from_str(r#"{"first_name":null,"last_name":"Petrov"}"#).expect("parses");
        let out = p.apply(&cur).expect("valid");
        assert_eq!(out.first_name, None);
        assert_eq!(out.last_name.as_deref(), Some("Petrov"));
        assert_eq!(out.phone.as_deref(), Some("+79161234567"));
    }
}
