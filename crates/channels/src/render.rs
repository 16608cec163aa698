//! Channel-independent rendering helpers: splitting long text, degrading buttons to
//! numbered options, and mapping typed answers back to button payloads.
//!
//! Everything here is pure; adapters combine these with their own markup.

use crate::Capabilities;
use voronka_core::keywords::normalize;
use voronka_core::message::{Button, MediaKind, OutboundMessage};

/// Splits `text` into chunks of at most `limit` characters (Unicode scalar values).
///
/// Cuts prefer, in order: paragraph breaks, line breaks, sentence ends, any whitespace;
/// a word longer than `limit` is cut hard (never inside a character, and not next to a
/// zero-width joiner or combining mark when that can be avoided). The whitespace at a cut
/// is dropped, so no chunk starts or ends with it and no chunk is empty. A text that fits
/// is returned unchanged; a blank text gives no chunks.
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(1);
    if text.trim().is_empty() {
        return Vec::new();
    }
    if text.chars().count() <= limit {
        return vec![text.to_string()];
    }
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if rest.chars().count() <= limit {
            let last = rest.trim_end();
            if !last.is_empty() {
                out.push(last.to_string());
            }
            break;
        }
        let (chunk_end, next_start) = cut_point(rest, limit);
        let chunk = rest[..chunk_end].trim_end();
        if !chunk.is_empty() {
            out.push(chunk.to_string());
        }
        rest = rest[next_start..].trim_start();
    }
    out
}

/// Where to cut `rest` (longer than `limit` characters): the end of the chunk and the
/// start of the remainder, as byte offsets.
fn cut_point(rest: &str, limit: usize) -> (usize, usize) {
    // The character right after the window is included: a separator there makes a
    // perfect cut, since the separator itself is dropped.
    let cs: Vec<(usize, char)> = rest.char_indices().take(limit + 1).collect();
    let is_para = |k: usize| {
        cs[k].1 == '\n'
            && cs[..k]
                .iter()
                .rev()
                .find(|(_, c)| !matches!(c, ' ' | '\t' | '\r'))
                .is_some_and(|(_, c)| *c == '\n')
    };
    let is_line = |k: usize| cs[k].1 == '\n';
    let is_sentence =
        |k: usize| cs[k].1.is_whitespace() && k > 0 && matches!(cs[k - 1].1, '.' | '!' | '?' | '…');
    let is_space = |k: usize| cs[k].1.is_whitespace();
    let at = |k: usize| (cs[k].0, cs[k].0 + cs[k].1.len_utf8());

    // A preferred break in the first half of the window would make a tiny part (and
    // more messages against per-chat rate limits), so lower-ranked breaks further on win.
    let min = (limit / 2).max(1);
    let levels: [&dyn Fn(usize) -> bool; 4] = [&is_para, &is_line, &is_sentence, &is_space];
    for level in levels {
        if let Some(k) = (min..cs.len()).rev().find(|&k| level(k)) {
            return at(k);
        }
    }
    if let Some(k) = (1..cs.len()).rev().find(|&k| is_space(k)) {
        return at(k);
    }
    // Hard cut inside a word, before the character at index `limit`.
    let mut k = limit.min(cs.len() - 1);
    while k > min && (is_glue(cs[k].1) || cs[k - 1].1 == '\u{200D}') {
        k -= 1;
    }
    if k == min && (is_glue(cs[k].1) || cs[k - 1].1 == '\u{200D}') {
        k = limit.min(cs.len() - 1);
    }
    (cs[k].0, cs[k].0)
}

/// Characters that belong to the character before them (cutting before them splits a
/// visible symbol in two).
fn is_glue(c: char) -> bool {
    matches!(c,
        '\u{200D}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{E0020}'..='\u{E007F}')
}

/// Cuts `label` to at most `limit` characters, ending with "…" when cut.
pub fn truncate_label(label: &str, limit: usize) -> String {
    if label.chars().count() <= limit {
        return label.to_string();
    }
    if limit == 0 {
        return String::new();
    }
    let head: String = label.chars().take(limit - 1).collect();
    format!("{}…", head.trim_end())
}

/// Appends one line per button: payload buttons numbered from `*next + 1` (the numbering
/// of [`OutboundMessage::choices`]), URL buttons as "Label: URL".
fn option_lines(buttons: &[Button], next: &mut usize, out: &mut Vec<String>) {
    for b in buttons {
        match b {
            Button::Url { label, url } => out.push(format!("{label}: {url}")),
            Button::Reply { .. } | Button::Postback { .. } => {
                *next += 1;
                out.push(format!("{next}. {}", b.label()));
            }
        }
    }
}

/// The message's buttons as text for channels without buttons: "1. Yes\n2. No", numbered
/// as [`OutboundMessage::choices`] (the message's own buttons, then each card's), with
/// URL buttons as "Label: https://…" lines in their place. `None` when there are no
/// buttons.
pub fn numbered_options(message: &OutboundMessage) -> Option<String> {
    let mut next = 0;
    let mut lines = Vec::new();
    option_lines(&message.buttons, &mut next, &mut lines);
    for card in &message.cards {
        option_lines(&card.buttons, &mut next, &mut lines);
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Maps what the person typed back to the payload of the choice it means: a number
/// ("2", "2.", " 2 ", "2)") picks the 2nd of [`OutboundMessage::choices`]; otherwise a
/// text equal to a choice's label (exactly, or case- and punctuation-insensitively, or as
/// the label cut with "…" as [`truncate_label`] does) picks that choice. Exact label
/// matches win over numbers, so buttons labelled "1".."5" work in any order. `None` when
/// nothing matches or the number is out of range.
pub fn resolve_answer(text: &str, message: &OutboundMessage) -> Option<String> {
    let choices = message.choices();
    let typed = text.trim();
    if typed.is_empty() {
        return None;
    }
    let payload = |b: &Button| b.payload().map(str::to_string);
    if let Some(b) = choices.iter().find(|b| b.label().trim() == typed) {
        return payload(b);
    }
    let digits = typed.strip_suffix(['.', ')']).unwrap_or(typed).trim_end();
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        let n: usize = digits.parse().ok()?;
        return n
            .checked_sub(1)
            .and_then(|i| choices.get(i))
            .and_then(|b| payload(b));
    }
    let norm = normalize(typed);
    if norm.is_empty() {
        return None;
    }
    if let Some(b) = choices.iter().find(|b| normalize(b.label()) == norm) {
        return payload(b);
    }
    // Channels that cut long labels (Telegram reply keyboards) send back the cut text.
    if typed.ends_with('…') {
        let head = normalize(typed.trim_end_matches('…'));
        if !head.is_empty() {
            let shown = typed.chars().count();
            if let Some(b) = choices.iter().find(|b| {
                b.label().chars().count() >= shown && normalize(b.label()).starts_with(&head)
            }) {
                return payload(b);
            }
        }
    }
    None
}

/// The whole message as plain text for channels without buttons, media or cards
/// (SMS-like), split to `caps.text_limit`.
///
/// Blocks, separated by blank lines: the text; the media URL ("file name: URL" for
/// files); the message's own options ([`numbered_options`] numbering); then each card as
/// title, subtitle, image URL and its options, numbered on from the message's. Numbers
/// ascend down the message so "reply with the number" reads naturally.
pub fn plain_text(message: &OutboundMessage, caps: &Capabilities) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    if let Some(t) = message.text.as_deref().filter(|t| !t.trim().is_empty()) {
        blocks.push(t.to_string());
    }
    if let Some(m) = &message.media {
        blocks.push(match (&m.kind, &m.file_name) {
            (MediaKind::File, Some(name)) => format!("{name}: {}", m.url),
            _ => m.url.clone(),
        });
    }
    let mut next = 0;
    let mut lines = Vec::new();
    option_lines(&message.buttons, &mut next, &mut lines);
    if !lines.is_empty() {
        blocks.push(lines.join("\n"));
    }
    for card in &message.cards {
        let mut lines = vec![card.title.clone()];
        lines.extend(
            card.subtitle
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned(),
        );
        lines.extend(card.image_url.iter().cloned());
        option_lines(&card.buttons, &mut next, &mut lines);
        blocks.push(lines.join("\n"));
    }
    split_text(&blocks.join("\n\n"), caps.text_limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use voronka_core::message::{Card, Media};

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    fn sms_caps(limit: usize) -> Capabilities {
        Capabilities {
            text_limit: limit,
            caption_limit: 0,
            reply_buttons: false,
            postback_buttons: false,
            url_buttons: false,
            max_buttons: 0,
            button_label_limit: 0,
            payload_limit_bytes: 0,
            media: false,
            cards: false,
            read_receipts: false,
            delivery_receipts: false,
            rate_per_account: 10.0,
            rate_per_chat: 1.0,
            chat_burst: 1,
        }
    }

    fn reply(label: &str, payload: Option<&str>) -> Button {
        Button::Reply {
            label: label.into(),
            payload: payload.map(Into::into),
        }
    }

    fn postback(label: &str, payload: &str) -> Button {
        Button::Postback {
            label: label.into(),
            payload: payload.into(),
        }
    }

    fn url(label: &str, url: &str) -> Button {
        Button::Url {
            label: label.into(),
            url: url.into(),
        }
    }

    fn with_buttons(buttons: Vec<Button>) -> OutboundMessage {
        OutboundMessage {
            text: Some("Pick".into()),
            buttons,
            ..Default::default()
        }
    }

    #[test]
    fn short_text_is_unchanged_and_blank_text_gives_nothing() {
        assert_eq!(split_text("  hi  ", 10), vec!["  hi  "]);
        assert!(split_text("", 10).is_empty());
        assert!(split_text(" \n\n ", 1).is_empty());
        assert_eq!(split_text("exactly10!", 10), vec!["exactly10!"]);
    }

    #[test]
    fn split_prefers_paragraphs_then_lines_then_sentences_then_spaces() {
        let para = "aaaa aaaa. aaaa\nbbbb\n\ncccc";
        assert_eq!(split_text(para, 22), vec!["aaaa aaaa. aaaa\nbbbb", "cccc"]);
        let line = "aaaa aaaa. aaaa\nbbbb cccc";
        assert_eq!(split_text(line, 22), vec!["aaaa aaaa. aaaa", "bbbb cccc"]);
        let sentence = "aaaa aaaa. bbbb cccc dddd";
        assert_eq!(
            split_text(sentence, 17),
            vec!["aaaa aaaa.", "bbbb cccc dddd"]
        );
        let space = "aaaa bbbb cccc dddd";
        assert_eq!(split_text(space, 12), vec!["aaaa bbbb", "cccc dddd"]);
    }

    #[test]
    fn an_early_paragraph_break_does_not_make_a_tiny_part() {
        let text = format!("Hi\n\n{}", "word ".repeat(10));
        let parts = split_text(&text, 20);
        assert!(chars(&parts[0]) > 10, "{parts:?}");
        assert!(parts.iter().all(|p| chars(p) <= 20));
    }

    #[test]
    fn a_separator_right_after_the_window_is_a_clean_cut() {
        assert_eq!(split_text("abcde fgh", 5), vec!["abcde", "fgh"]);
    }

    #[test]
    fn long_words_are_cut_hard_and_nothing_is_lost() {
        let text = "x".repeat(25);
        let parts = split_text(&text, 10);
        assert_eq!(parts, vec!["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
        let mixed = format!("short {} end", "y".repeat(30));
        let parts = split_text(&mixed, 12);
        assert!(parts.iter().all(|p| !p.is_empty() && chars(p) <= 12));
        let joined: String = parts.concat();
        assert_eq!(joined.replace(' ', ""), mixed.replace(' ', ""));
    }

    #[test]
    fn splitting_counts_characters_not_bytes() {
        let text = "привет мир ".repeat(50);
        for p in split_text(&text, 30) {
            assert!(chars(&p) <= 30);
            assert!(!p.starts_with(' ') && !p.ends_with(' '));
        }
        let emoji = "😀".repeat(15);
        assert_eq!(
            split_text(&emoji, 10),
            vec!["😀".repeat(10), "😀".repeat(5)]
        );
    }

    #[test]
    fn hard_cuts_avoid_splitting_joined_emoji() {
        // 👍🏽 is two scalar values; a cut between them would orphan the skin tone.
        let text = format!("{}👍🏽", "a".repeat(9));
        let parts = split_text(&text, 10);
        assert_eq!(parts, vec!["a".repeat(9), "👍🏽".to_string()]);
    }

    #[test]
    fn no_part_is_empty_for_whitespace_heavy_text() {
        let text = "a\n\n\n\n\n\n\n\n\n\nb \n \n c";
        let parts = split_text(text, 3);
        assert!(parts.iter().all(|p| !p.trim().is_empty()), "{parts:?}");
        assert_eq!(parts.concat().replace(char::is_whitespace, ""), "abc");
    }

    #[test]
    fn truncate_label_adds_an_ellipsis() {
        assert_eq!(truncate_label("Short", 10), "Short");
        assert_eq!(truncate_label("Exactly 10", 10), "Exactly 10");
        assert_eq!(truncate_label("Much too long", 10), "Much too…");
        assert_eq!(truncate_label("Привет мир", 5), "Прив…");
        assert_eq!(truncate_label("abc", 0), "");
        assert_eq!(chars(&truncate_label(&"a".repeat(100), 64)), 64);
    }

    #[test]
    fn numbered_options_follow_choices_with_url_lines_in_place() {
        let mut m = with_buttons(vec![
            reply("Yes", None),
            url("Site", "https://example.com"),
            postback("No", "NO"),
        ]);
        m.cards = vec![Card {
            title: "Card".into(),
            subtitle: None,
            image_url: None,
            buttons: vec![postback("Buy", "BUY")],
        }];
        assert_eq!(
            numbered_options(&m).as_deref(),
            Some("1. Yes\nSite: https://example.com\n2. No\n3. Buy")
        );
        assert_eq!(numbered_options(&OutboundMessage::text("x")), None);
    }

    #[test]
    fn resolve_answer_maps_numbers_and_labels() {
        let m = with_buttons(vec![
            reply("Yes", None),
            url("Site", "https://example.com"),
            postback("No thanks", "NO"),
        ]);
        assert_eq!(resolve_answer("1", &m).as_deref(), Some("Yes"));
        assert_eq!(resolve_answer("2", &m).as_deref(), Some("NO"));
        assert_eq!(resolve_answer("2.", &m).as_deref(), Some("NO"));
        assert_eq!(resolve_answer(" 2 ", &m).as_deref(), Some("NO"));
        assert_eq!(resolve_answer("2)", &m).as_deref(), Some("NO"));
        assert_eq!(resolve_answer("no THANKS!", &m).as_deref(), Some("NO"));
        assert_eq!(resolve_answer(" yes ", &m).as_deref(), Some("Yes"));
        assert_eq!(resolve_answer("3", &m), None);
        assert_eq!(resolve_answer("0", &m), None);
        assert_eq!(resolve_answer("99999999999999999999999", &m), None);
        assert_eq!(resolve_answer("Site", &m), None);
        assert_eq!(resolve_answer("maybe", &m), None);
        assert_eq!(resolve_answer("", &m), None);
        assert_eq!(resolve_answer("!!", &m), None);
    }

    #[test]
    fn resolve_answer_prefers_exact_labels_over_numbers() {
        let m = with_buttons(vec![reply("5", Some("FIVE")), reply("1", Some("ONE"))]);
        assert_eq!(resolve_answer("1", &m).as_deref(), Some("ONE"));
        assert_eq!(resolve_answer("5", &m).as_deref(), Some("FIVE"));
        assert_eq!(resolve_answer("2", &m).as_deref(), Some("ONE"));
        assert_eq!(resolve_answer("3", &m), None);
    }

    #[test]
    fn resolve_answer_matches_emoji_labels_and_cut_labels() {
        let long = "A very long label that a keyboard had to cut somewhere";
        let m = with_buttons(vec![reply("👍", Some("UP")), postback(long, "LONG")]);
        assert_eq!(resolve_answer("👍", &m).as_deref(), Some("UP"));
        let cut = truncate_label(long, 20);
        assert_eq!(resolve_answer(&cut, &m).as_deref(), Some("LONG"));
    }

    #[test]
    fn resolve_answer_counts_card_buttons_after_the_messages() {
        let mut m = with_buttons(vec![postback("A", "PA")]);
        m.cards = vec![Card {
            title: "t".into(),
            subtitle: None,
            image_url: None,
            buttons: vec![postback("B", "PB")],
        }];
        assert_eq!(resolve_answer("2", &m).as_deref(), Some("PB"));
    }

    #[test]
    fn plain_text_degrades_everything() {
        let m = OutboundMessage {
            text: Some("Our plans".into()),
            media: Some(Media {
                kind: MediaKind::File,
                url: "https://example.com/p.pdf".into(),
                file_name: Some("prices.pdf".into()),
            }),
            buttons: vec![postback("Not now", "LATER")],
            cards: vec![
                Card {
                    title: "Basic".into(),
                    subtitle: Some("Cheap".into()),
                    image_url: Some("https://example.com/b.png".into()),
                    buttons: vec![
                        postback("Buy Basic", "B"),
                        url("More", "https://example.com/b"),
                    ],
                },
                Card {
                    title: "Pro".into(),
                    subtitle: None,
                    image_url: None,
                    buttons: vec![postback("Buy Pro", "P")],
                },
            ],
        };
        let parts = plain_text(&m, &sms_caps(1600));
        assert_eq!(
            parts,
            vec![
                "Our plans\n\nprices.pdf: https://example.com/p.pdf\n\n1. Not now\n\n\
                 Basic\nCheap\nhttps://example.com/b.png\n2. Buy Basic\nMore: https://example.com/b\n\n\
                 Pro\n3. Buy Pro"
            ]
        );
        assert_eq!(resolve_answer("3", &m).as_deref(), Some("P"));
    }

    #[test]
    fn plain_text_splits_to_the_text_limit() {
        let m = OutboundMessage {
            text: Some("word ".repeat(100)),
            buttons: vec![reply("Yes", None), reply("No", None)],
            ..Default::default()
        };
        let parts = plain_text(&m, &sms_caps(160));
        assert!(parts.len() >= 4);
        assert!(parts.iter().all(|p| chars(p) <= 160));
        assert!(parts.last().is_some_and(|p| p.ends_with("1. Yes\n2. No")));
    }
}
