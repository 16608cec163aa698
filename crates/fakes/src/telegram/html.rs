//! Telegram's `parse_mode=HTML` parser.
//!
//! Telegram refuses a whole message when its HTML is malformed, with a 400 that names the
//! problem and its byte offset. Getting this wrong in production means a broadcast that
//! fails for every recipient, so the fake checks HTML as strictly as the real server does
//! and reports with the same wording (modelled on TDLib's `parse_html`). It also produces
//! the plain text and the UTF-16 based entities Telegram echoes in the returned `Message`,
//! because the length limits apply to that plain text, not to the markup.
//!
//! Two points follow the Bot API documentation rather than the server's leniency: a bare
//! `&` that does not start one of the supported entities is refused (Telegram keeps it
//! literally, but the documentation requires `&amp;`), and `<a>` without `href` is refused.

use std::fmt;

use serde_json::{json, Value};

/// Tags Telegram accepts in HTML parse mode.
const SUPPORTED_TAGS: &[&str] = &[
    "a",
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "tg-spoiler",
    "span",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
];

/// A formatting span in Telegram's terms; offsets and lengths count UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Telegram's entity type, e.g. `bold` or `text_link`.
    pub kind: &'static str,
    /// Start, in UTF-16 code units of the plain text.
    pub offset: usize,
    /// Length, in UTF-16 code units.
    pub length: usize,
    /// Target of a `text_link`.
    pub url: Option<String>,
    /// Language of a `pre` block.
    pub language: Option<String>,
    /// Id of a `custom_emoji`.
    pub custom_emoji_id: Option<String>,
}

impl Entity {
    /// The `MessageEntity` JSON object Telegram returns.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"offset": self.offset, "length": self.length, "type": self.kind});
        if let Some(url) = &self.url {
            v["url"] = json!(url);
        }
        if let Some(language) = &self.language {
            v["language"] = json!(language);
        }
        if let Some(id) = &self.custom_emoji_id {
            v["custom_emoji_id"] = json!(id);
        }
        v
    }
}

/// Result of parsing: what the recipient sees, and how it is formatted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Text with tags removed and entities decoded.
    pub text: String,
    /// Entities sorted by offset (longer first on ties), as Telegram sorts them.
    pub entities: Vec<Entity>,
}

/// Why Telegram would refuse the markup; displays as the part after "can't parse entities: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlError(pub String);

impl fmt::Display for HtmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HtmlError {}

fn at(reason: impl fmt::Display, offset: usize) -> HtmlError {
    HtmlError(format!("{reason} at byte offset {offset}"))
}

struct Open {
    tag: String,
    argument: String,
    expandable: bool,
    start: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Parses Telegram HTML into plain text and entities, or says why Telegram would refuse it.
pub fn parse_html(text: &str) -> Result<Parsed, HtmlError> {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut out = String::with_capacity(n);
    let mut pos16 = 0usize;
    let mut stack: Vec<Open> = Vec::new();
    let mut entities: Vec<Entity> = Vec::new();
    let mut i = 0usize;

    while i < n {
        match bytes[i] {
            b'&' => {
                let (ch, len) = decode_entity(text, i)?;
                out.push(ch);
                pos16 += ch.len_utf16();
                i += len;
            }
            b'<' => {
                let begin = i;
                i += 1;
                if i < n && bytes[i] == b'/' {
                    i += 1;
                    let name_start = i;
                    while i < n && !is_space(bytes[i]) && bytes[i] != b'>' {
                        i += 1;
                    }
                    let name = text[name_start..i].to_ascii_lowercase();
                    while i < n && is_space(bytes[i]) {
                        i += 1;
                    }
                    if i >= n || bytes[i] != b'>' {
                        return Err(at("Unclosed end tag", begin));
                    }
                    i += 1;
                    let Some(open) = stack.pop() else {
                        return Err(at("Unexpected end tag", begin));
                    };
                    if !name.is_empty() && name != open.tag {
                        return Err(HtmlError(format!(
                            "Unmatched end tag at byte offset {begin}, expected \"</{}>\", found \"</{name}>\"",
                            open.tag
                        )));
                    }
                    close(open, pos16, &mut stack, &mut entities);
                } else {
                    let (open, next) = parse_start_tag(text, begin, pos16)?;
                    stack.push(open);
                    i = next;
                }
            }
            _ => {
                // Copy the run up to the next markup character in one go; both delimiters
                // are ASCII, so the slice ends on a character boundary.
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'<' || b == b'&')
                    .map_or(n, |p| i + p);
                let run = &text[i..end];
                out.push_str(run);
                pos16 += utf16_len(run);
                i = end;
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(HtmlError(format!(
            "Can't find end tag corresponding to start tag \"{}\"",
            open.tag
        )));
    }
    entities.sort_by(|a, b| a.offset.cmp(&b.offset).then(b.length.cmp(&a.length)));
    Ok(Parsed {
        text: out,
        entities,
    })
}

/// Parses `<tag attr=…>` starting at `begin` (the `<`); returns the open tag and the index
/// after `>`.
fn parse_start_tag(text: &str, begin: usize, pos16: usize) -> Result<(Open, usize), HtmlError> {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = begin + 1;
    while i < n && !is_space(bytes[i]) && bytes[i] != b'>' {
        i += 1;
    }
    if i >= n {
        return Err(at("Unclosed start tag", begin));
    }
    let tag = text[begin + 1..i].to_ascii_lowercase();
    if !SUPPORTED_TAGS.contains(&tag.as_str()) {
        return Err(at(format!("Unsupported start tag \"{tag}\""), begin));
    }

    let mut argument = String::new();
    let mut has_href = false;
    let mut expandable = false;
    loop {
        while i < n && is_space(bytes[i]) {
            i += 1;
        }
        if i >= n {
            return Err(at("Unclosed start tag", begin));
        }
        if bytes[i] == b'>' {
            i += 1;
            break;
        }
        let name_start = i;
        while i < n && !is_space(bytes[i]) && bytes[i] != b'=' && bytes[i] != b'>' {
            i += 1;
        }
        let attr = text[name_start..i].to_ascii_lowercase();
        if attr.is_empty() {
            return Err(at(
                format!("Empty attribute name in the tag \"{tag}\""),
                begin,
            ));
        }
        while i < n && is_space(bytes[i]) {
            i += 1;
        }
        if i >= n {
            return Err(at("Unclosed start tag", begin));
        }
        if bytes[i] != b'=' {
            if tag == "blockquote" && attr == "expandable" {
                expandable = true;
                continue;
            }
            return Err(at(
                format!("Expected equal sign in declaration of an attribute of the tag \"{tag}\""),
                begin,
            ));
        }
        i += 1;
        while i < n && is_space(bytes[i]) {
            i += 1;
        }
        if i >= n {
            return Err(at("Unclosed start tag", begin));
        }
        let value = if bytes[i] == b'"' || bytes[i] == b'\'' {
            let quote = bytes[i];
            i += 1;
            let mut value = String::new();
            loop {
                if i >= n {
                    return Err(at("Unclosed start tag", begin));
                }
                if bytes[i] == quote {
                    i += 1;
                    break;
                }
                if bytes[i] == b'&' {
                    let (ch, len) = decode_entity(text, i)?;
                    value.push(ch);
                    i += len;
                } else {
                    let end = bytes[i..]
                        .iter()
                        .position(|&b| b == quote || b == b'&')
                        .map_or(n, |p| i + p);
                    value.push_str(&text[i..end]);
                    i = end;
                }
            }
            value
        } else {
            // HTML "name token": letters, digits, periods and hyphens, case-insensitive.
            let token_start = i;
            while i < n
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'-')
            {
                i += 1;
            }
            if i >= n {
                return Err(at("Unclosed start tag", begin));
            }
            if !is_space(bytes[i]) && bytes[i] != b'>' {
                return Err(at("Unexpected end of name token", token_start));
            }
            text[token_start..i].to_ascii_lowercase()
        };
        match (tag.as_str(), attr.as_str()) {
            ("a", "href") => {
                has_href = true;
                argument = value;
            }
            ("code", "class") => {
                if let Some(lang) = value.strip_prefix("language-") {
                    argument = lang.to_owned();
                }
            }
            ("span", "class") => {
                if let Some(class) = value.strip_prefix("tg-") {
                    argument = class.to_owned();
                }
            }
            ("tg-emoji", "emoji-id") => argument = value,
            ("blockquote", "expandable") => expandable = true,
            _ => {}
        }
    }

    match tag.as_str() {
        "span" if argument != "spoiler" => {
            return Err(at("Tag \"span\" must have class \"tg-spoiler\"", begin))
        }
        "a" if !has_href || argument.trim().is_empty() => {
            return Err(at("Tag \"a\" must have attribute \"href\"", begin));
        }
        "tg-emoji" if !matches!(argument.parse::<i64>(), Ok(id) if id > 0) => {
            return Err(HtmlError(
                "Invalid custom emoji identifier specified".into(),
            ));
        }
        _ => {}
    }
    Ok((
        Open {
            tag,
            argument,
            expandable,
            start: pos16,
        },
        i,
    ))
}

fn close(open: Open, pos16: usize, stack: &mut [Open], entities: &mut Vec<Entity>) {
    // `<pre><code class="language-x">` is how Telegram spells a pre block with a language:
    // the inner code tag does not become an entity of its own.
    if open.tag == "code" {
        if let Some(parent) = stack.last_mut() {
            if parent.tag == "pre" {
                if !open.argument.is_empty() {
                    parent.argument = open.argument;
                }
                return;
            }
        }
    }
    let length = pos16 - open.start;
    if length == 0 {
        return;
    }
    let mut entity = Entity {
        kind: "bold",
        offset: open.start,
        length,
        url: None,
        language: None,
        custom_emoji_id: None,
    };
    entity.kind = match open.tag.as_str() {
        "b" | "strong" => "bold",
        "i" | "em" => "italic",
        "u" | "ins" => "underline",
        "s" | "strike" | "del" => "strikethrough",
        "tg-spoiler" | "span" => "spoiler",
        "code" => "code",
        "pre" => {
            if !open.argument.is_empty() {
                entity.language = Some(open.argument);
            }
            "pre"
        }
        "blockquote" if open.expandable => "expandable_blockquote",
        "blockquote" => "blockquote",
        "tg-emoji" => {
            entity.custom_emoji_id = Some(open.argument);
            "custom_emoji"
        }
        _ => {
            entity.url = Some(open.argument);
            "text_link"
        }
    };
    entities.push(entity);
}

/// Decodes the HTML entity starting at `start` (an `&`); returns the character and the
/// number of bytes consumed.
fn decode_entity(text: &str, start: usize) -> Result<(char, usize), HtmlError> {
    let bytes = text.as_bytes();
    let mut end = start + 1;
    while end < bytes.len()
        && end - start <= 12
        && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'#')
    {
        end += 1;
    }
    if end >= bytes.len() || bytes[end] != b';' || end == start + 1 {
        return Err(at("Character \"&\" must be escaped as \"&amp;\"", start));
    }
    let name = &text[start + 1..end];
    let ch = if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => num.parse::<u32>().ok(),
        };
        code.filter(|&c| c != 0).and_then(char::from_u32)
    } else {
        match name {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            _ => None,
        }
    };
    match ch {
        Some(ch) => Ok((ch, end + 1 - start)),
        None => Err(at(format!("Unsupported HTML entity \"&{name};\""), start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Parsed {
        parse_html(s).expect("should parse")
    }

    fn err(s: &str) -> String {
        parse_html(s).expect_err("should fail").0
    }

    #[test]
    fn plain_text_passes_through() {
        let p = ok("Hello, мир > 2");
        assert_eq!(p.text, "Hello, мир > 2");
        assert!(p.entities.is_empty());
    }

    #[test]
    fn entities_are_decoded() {
        assert_eq!(ok("&lt;b&gt; &amp; &quot;x&quot;").text, "<b> & \"x\"");
        assert_eq!(ok("&#65;&#x42;&#X43;").text, "ABC");
        assert_eq!(ok("&#128512;").text, "😀");
    }

    #[test]
    fn bare_ampersand_and_unknown_entities_are_refused() {
        assert_eq!(
            err("Tom & Jerry"),
            "Character \"&\" must be escaped as \"&amp;\" at byte offset 4"
        );
        assert_eq!(
            err("a&nbsp;b"),
            "Unsupported HTML entity \"&nbsp;\" at byte offset 1"
        );
        assert!(err("&#0;").contains("Unsupported HTML entity"));
        assert!(err("&#xD800;").contains("Unsupported HTML entity"));
        assert!(err("&").contains("byte offset 0"));
    }

    #[test]
    fn formatting_entities_use_utf16_offsets() {
        let p = ok("😀 <b>bold</b> <i>it</i>");
        assert_eq!(p.text, "😀 bold it");
        assert_eq!(p.entities.len(), 2);
        assert_eq!(p.entities[0].kind, "bold");
        assert_eq!((p.entities[0].offset, p.entities[0].length), (3, 4));
        assert_eq!(p.entities[1].kind, "italic");
        assert_eq!((p.entities[1].offset, p.entities[1].length), (8, 2));
    }

    #[test]
    fn all_supported_tags() {
        let p = ok(concat!(
            "<b>1</b><strong>2</strong><i>3</i><em>4</em><u>5</u><ins>6</ins>",
            "<s>7</s><strike>8</strike><del>9</del><tg-spoiler>a</tg-spoiler>",
            "<span class=\"tg-spoiler\">b</span><a href=\"https://x.y/?a=1&amp;b=2\">c</a>",
            "<code>d</code><pre>e</pre><blockquote>f</blockquote>",
            "<blockquote expandable>g</blockquote><tg-emoji emoji-id=\"5368324170671202286\">👍</tg-emoji>"
        ));
        let kinds: Vec<_> = p.entities.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "bold",
                "bold",
                "italic",
                "italic",
                "underline",
                "underline",
                "strikethrough",
                "strikethrough",
                "strikethrough",
                "spoiler",
                "spoiler",
                "text_link",
                "code",
                "pre",
                "blockquote",
                "expandable_blockquote",
                "custom_emoji"
            ]
        );
        assert_eq!(p.entities[11].url.as_deref(), Some("https://x.y/?a=1&b=2"));
        assert_eq!(
            p.entities[16].custom_emoji_id.as_deref(),
            Some("5368324170671202286")
        );
    }

    #[test]
    fn pre_with_language() {
        let p = ok("<pre><code class=\"language-rust\">fn main() {}</code></pre>");
        assert_eq!(p.text, "fn main() {}");
        assert_eq!(p.entities.len(), 1);
        assert_eq!(p.entities[0].kind, "pre");
        assert_eq!(p.entities[0].language.as_deref(), Some("rust"));
    }

    #[test]
    fn nested_and_case_insensitive_tags() {
        let p = ok("<B>bold <I>both</I></B>");
        assert_eq!(p.text, "bold both");
        assert_eq!(p.entities[0].kind, "bold");
        assert_eq!(p.entities[0].length, 9);
        assert_eq!(p.entities[1].kind, "italic");
        // `</>` closes whatever is open, as TDLib allows.
        assert_eq!(ok("<b>x</>").entities[0].kind, "bold");
        // Single-quoted and unquoted attribute values.
        assert_eq!(
            ok("<a href='http://a.b'>x</a>").entities[0].url.as_deref(),
            Some("http://a.b")
        );
        assert_eq!(
            ok("<span class=tg-spoiler>x</span>").entities[0].kind,
            "spoiler"
        );
    }

    #[test]
    fn empty_entities_are_dropped() {
        let p = ok("<b></b>x");
        assert_eq!(p.text, "x");
        assert!(p.entities.is_empty());
    }

    #[test]
    fn unsupported_and_broken_tags() {
        assert_eq!(
            err("x <foo>y</foo>"),
            "Unsupported start tag \"foo\" at byte offset 2"
        );
        assert_eq!(
            err("<br/>"),
            "Unsupported start tag \"br/\" at byte offset 0"
        );
        assert_eq!(err("1 < 2"), "Unsupported start tag \"\" at byte offset 2");
        assert_eq!(err("a <b"), "Unclosed start tag at byte offset 2");
        assert_eq!(
            err("<b>bold"),
            "Can't find end tag corresponding to start tag \"b\""
        );
        assert_eq!(
            err("<b>x</i>"),
            "Unmatched end tag at byte offset 4, expected \"</b>\", found \"</i>\""
        );
        assert_eq!(err("x</b>"), "Unexpected end tag at byte offset 1");
        assert_eq!(err("<b>x</b"), "Unclosed end tag at byte offset 4");
        assert_eq!(
            err("<span>x</span>"),
            "Tag \"span\" must have class \"tg-spoiler\" at byte offset 0"
        );
        assert_eq!(
            err("<a>x</a>"),
            "Tag \"a\" must have attribute \"href\" at byte offset 0"
        );
        assert_eq!(
            err("<a href>x</a>"),
            "Expected equal sign in declaration of an attribute of the tag \"a\" at byte offset 0"
        );
        assert_eq!(
            err("<a href=\"x>y</a>"),
            "Unclosed start tag at byte offset 0"
        );
        assert_eq!(
            err("<a href=x/y>z</a>"),
            "Unexpected end of name token at byte offset 8"
        );
        assert_eq!(
            err("<tg-emoji emoji-id=\"abc\">x</tg-emoji>"),
            "Invalid custom emoji identifier specified"
        );
    }

    #[test]
    fn offsets_are_bytes_not_characters() {
        assert_eq!(
            err("ééé <x>"),
            "Unsupported start tag \"x\" at byte offset 7"
        );
    }

    #[test]
    fn entity_json_shape() {
        let p = ok("<a href=\"http://e.x\">l</a>");
        assert_eq!(
            p.entities[0].to_json(),
            json!({"offset":0,"length":1,"type":"text_link","url":"http://e.x"})
        );
    }
}
