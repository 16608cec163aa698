//! Matching what a person typed against keyword lists (STOP / START words, flow triggers):
//! case-insensitive, ignoring punctuation, emoji and extra spaces, so "Stop!", " СТОП. "
//! and "stop 🙏" all mean STOP.

/// Lowercases `text`, keeps letters and digits, and collapses everything else into
/// single spaces.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// Whether `text` is exactly one of `words` once both are normalized.
pub fn is_one_of(text: &str, words: &[String]) -> bool {
    let t = normalize(text);
    !t.is_empty() && words.iter().any(|w| normalize(w) == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_punctuation_and_spaces_do_not_matter() {
        let stop = vec!["stop".to_string(), "СТОП".to_string()];
        for t in [
            "STOP",
            "stop!",
            " Stop. ",
            "стоп",
            "СТОП!!!",
            "«стоп»",
            "stop 🙏",
        ] {
            assert!(is_one_of(t, &stop), "{t}");
        }
        for t in ["stopper", "please stop now", "", "!!!"] {
            assert!(!is_one_of(t, &stop), "{t}");
        }
        assert_eq!(normalize("  Hello,   World! "), "hello world");
    }
}
