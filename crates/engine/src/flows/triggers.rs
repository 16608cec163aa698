//! Which flows a signal starts, without I/O.
//!
//! Precedence for a message from the contact, highest first (documented in
//! docs/flows.md): STOP words (handled before flows ever see the message), a run of
//! this contact waiting for an answer or a button, a button-payload trigger, a ref
//! (deep-link) trigger, a new-subscriber trigger, then keyword triggers — by priority,
//! then exact before contains before regex before "any message", then the flow
//! published first. A message starts at most one flow. Signals that are not messages
//! (a tag added, an API event) start every flow that listens for them.

use std::sync::Arc;
use voronka_core::channel::ChannelKind;
use voronka_core::flow::{FlowDocument, KeywordMatch, Trigger};
use voronka_core::keywords;
use voronka_core::ChannelId;
use voronka_core::FlowId;

/// A published flow version, parsed.
#[derive(Debug, Clone)]
pub struct LiveFlow {
    /// The flow.
    pub flow_id: FlowId,
    /// Its name.
    pub name: String,
    /// The live version.
    pub version: u32,
    /// The document of that version.
    pub doc: Arc<FlowDocument>,
    /// Compiled regexes of its keyword triggers, by trigger index.
    pub regexes: Vec<(usize, Vec<regex::Regex>)>,
}

impl LiveFlow {
    /// Parses a published version; regexes that do not compile are left out (the
    /// validator refuses them at publish time).
    pub fn new(flow_id: FlowId, name: String, version: u32, doc: FlowDocument) -> LiveFlow {
        let regexes = doc
            .triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Trigger::Keyword {
                    keywords,
                    matching: KeywordMatch::Regex,
                    ..
                } => Some((
                    i,
                    keywords
                        .iter()
                        .filter_map(|k| {
                            regex::RegexBuilder::new(k)
                                .case_insensitive(true)
                                .size_limit(1 << 20)
                                .build()
                                .ok()
                        })
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        LiveFlow {
            flow_id,
            name,
            version,
            doc: Arc::new(doc),
            regexes,
        }
    }
}

/// A message from the contact, as triggers see it.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    /// The channel it came on.
    pub channel: Option<(ChannelId, ChannelKind)>,
    /// Its text (empty for a press).
    pub text: &'a str,
    /// A pressed button's payload.
    pub payload: Option<&'a str>,
    /// A deep-link ref (`/start PAYLOAD`).
    pub reference: Option<&'a str>,
    /// Whether the contact opted in with it.
    pub subscribed: bool,
}

fn channel_matches(channels: &[String], channel: Option<(ChannelId, ChannelKind)>) -> bool {
    if channels.is_empty() {
        return true;
    }
    let Some((id, kind)) = channel else {
        return false;
    };
    channels
        .iter()
        .any(|c| c == kind.as_str() || *c == id.0.to_string())
}

/// Rank of a match: larger wins.
type Rank = (u8, i32, u8, std::cmp::Reverse<usize>);

/// The one flow a message starts, if any: (index into `flows`, trigger label).
pub fn for_message(flows: &[LiveFlow], m: &Message<'_>) -> Option<(usize, String)> {
    let mut best: Option<(Rank, usize, String)> = None;
    let normalized = keywords::normalize(m.text);
    for (fi, f) in flows.iter().enumerate() {
        for (ti, t) in f.doc.triggers.iter().enumerate() {
            let hit: Option<(u8, i32, u8, String)> = match t {
                Trigger::Button { payload } if m.payload == Some(payload.as_str()) => {
                    Some((4, 0, 0, format!("button:{payload}")))
                }
                Trigger::Ref { reference } if m.reference == Some(reference.as_str()) => {
                    Some((3, 0, 0, format!("ref:{reference}")))
                }
                Trigger::NewSubscriber { channels }
                    if m.subscribed && channel_matches(channels, m.channel) =>
                {
                    Some((2, 0, 0, "new_subscriber".into()))
                }
                Trigger::Keyword {
                    keywords: words,
                    matching,
                    channels,
                    priority,
                } if !m.text.trim().is_empty() && channel_matches(channels, m.channel) => {
                    let matched = match matching {
                        KeywordMatch::Exact => words
                            .iter()
                            .find(|w| keywords::normalize(w) == normalized)
                            .map(|w| (3, w.clone())),
                        KeywordMatch::Contains => words
                            .iter()
                            .find(|w| {
                                let w = keywords::normalize(w);
                                !w.is_empty() && contains_word(&normalized, &w)
                            })
                            .map(|w| (2, w.clone())),
                        KeywordMatch::Regex => f
                            .regexes
                            .iter()
                            .find(|(i, _)| *i == ti)
                            .and_then(|(_, rs)| rs.iter().find(|r| r.is_match(m.text)))
                            .map(|r| (1, r.as_str().to_string())),
                        KeywordMatch::Any => Some((0, "*".to_string())),
                    };
                    matched.map(|(kind, w)| (1, *priority, kind, format!("keyword:{w}")))
                }
                _ => None,
            };
            if let Some((class, prio, kind, label)) = hit {
                let rank: Rank = (class, prio, kind, std::cmp::Reverse(fi));
                if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
                    best = Some((rank, fi, label));
                }
            }
        }
    }
    best.map(|(_, fi, label)| (fi, label))
}

/// Whether `word` occurs in `text` as whole words (both already normalized).
fn contains_word(text: &str, word: &str) -> bool {
    let padded = format!(" {text} ");
    padded.contains(&format!(" {word} "))
}

/// Every flow a non-message signal starts: (index, trigger label).
pub fn for_signal(flows: &[LiveFlow], kind: &str, name: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (fi, f) in flows.iter().enumerate() {
        if f.doc.triggers.iter().any(|t| matches_signal(t, kind, name)) {
            out.push((fi, format!("{kind}:{name}")));
        }
    }
    out
}

/// Whether a trigger (or an `exit_on` rule) listens for a non-message signal.
pub fn matches_signal(t: &Trigger, kind: &str, name: &str) -> bool {
    match (t, kind) {
        (Trigger::TagAdded { tag }, "tag_added") => tag == name,
        (Trigger::Event { name: n }, "event") => n == name,
        _ => false,
    }
}

/// Whether an `exit_on` rule matches a message (keywords, buttons).
pub fn exit_on_message(doc: &FlowDocument, m: &Message<'_>) -> bool {
    let normalized = keywords::normalize(m.text);
    doc.exit_on.iter().any(|t| match t {
        Trigger::Keyword {
            keywords: words,
            matching,
            ..
        } => match matching {
            KeywordMatch::Exact => words.iter().any(|w| keywords::normalize(w) == normalized),
            KeywordMatch::Contains => words
                .iter()
                .any(|w| contains_word(&normalized, &keywords::normalize(w))),
            KeywordMatch::Regex => words.iter().any(|w| {
                regex::RegexBuilder::new(w)
                    .case_insensitive(true)
                    .build()
                    .is_ok_and(|r| r.is_match(m.text))
            }),
            KeywordMatch::Any => !m.text.trim().is_empty(),
        },
        Trigger::Button { payload } => m.payload == Some(payload.as_str()),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use voronka_core::flow::Step;

    fn flow(id: i64, triggers: Vec<Trigger>) -> LiveFlow {
        let doc = FlowDocument {
            name: format!("f{id}"),
            description: None,
            triggers,
            exit_on: Vec::new(),
            settings: Default::default(),
            start: "s".into(),
            steps: vec![Step::Stop(Default::default())],
        };
        LiveFlow::new(FlowId(id), format!("f{id}"), 1, doc)
    }

    fn kw(words: &[&str], matching: KeywordMatch, priority: i32) -> Trigger {
        Trigger::Keyword {
            keywords: words.iter().map(|w| w.to_string()).collect(),
            matching,
            channels: Vec::new(),
            priority,
        }
    }

    fn text(t: &str) -> Message<'_> {
        Message {
            text: t,
            ..Message::default()
        }
    }

    #[test]
    fn exact_beats_contains_beats_regex_beats_any() {
        let flows = vec![
            flow(1, vec![kw(&[], KeywordMatch::Any, 0)]),
            flow(2, vec![kw(&["pri.e"], KeywordMatch::Regex, 0)]),
            flow(3, vec![kw(&["price"], KeywordMatch::Contains, 0)]),
            flow(4, vec![kw(&["Price!"], KeywordMatch::Exact, 0)]),
        ];
        assert_eq!(for_message(&flows, &text("price")).map(|x| x.0), Some(3));
        assert_eq!(
            for_message(&flows, &text("the price please")).map(|x| x.0),
            Some(2)
        );
        assert_eq!(for_message(&flows, &text("prize")).map(|x| x.0), Some(1));
        assert_eq!(for_message(&flows, &text("hello")).map(|x| x.0), Some(0));
    }

    #[test]
    fn priority_wins_then_the_older_flow() {
        let flows = vec![
            flow(1, vec![kw(&["hi"], KeywordMatch::Contains, 0)]),
            flow(2, vec![kw(&["hi"], KeywordMatch::Contains, 5)]),
            flow(3, vec![kw(&["hi"], KeywordMatch::Contains, 5)]),
        ];
        assert_eq!(for_message(&flows, &text("hi there")).map(|x| x.0), Some(1));
    }

    #[test]
    fn button_beats_ref_beats_new_subscriber_beats_keywords() {
        let flows = vec![
            flow(1, vec![kw(&[], KeywordMatch::Any, 100)]),
            flow(2, vec![Trigger::NewSubscriber { channels: vec![] }]),
            flow(
                3,
                vec![Trigger::Ref {
                    reference: "spring".into(),
                }],
            ),
            flow(
                4,
                vec![Trigger::Button {
                    payload: "BUY".into(),
                }],
            ),
        ];
        let start = Message {
            text: "/start spring",
            reference: Some("spring"),
            subscribed: true,
            ..Message::default()
        };
        assert_eq!(for_message(&flows, &start).map(|x| x.0), Some(2));
        let plain_start = Message {
            text: "/start",
            subscribed: true,
            ..Message::default()
        };
        assert_eq!(for_message(&flows, &plain_start).map(|x| x.0), Some(1));
        let press = Message {
            payload: Some("BUY"),
            ..Message::default()
        };
        assert_eq!(for_message(&flows, &press).map(|x| x.0), Some(3));
    }

    #[test]
    fn channel_filters_apply() {
        let flows = vec![flow(
            1,
            vec![Trigger::Keyword {
                keywords: vec!["hi".into()],
                matching: KeywordMatch::Exact,
                channels: vec!["webchat".into()],
                priority: 0,
            }],
        )];
        let tg = Message {
            text: "hi",
            channel: Some((ChannelId(1), ChannelKind::Telegram)),
            ..Message::default()
        };
        assert!(for_message(&flows, &tg).is_none());
        let web = Message {
            channel: Some((ChannelId(2), ChannelKind::Webchat)),
            ..tg
        };
        assert!(for_message(&flows, &web).is_some());
    }

    #[test]
    fn contains_matches_whole_words_only() {
        assert!(contains_word("what is the price", "price"));
        assert!(!contains_word("priceless", "price"));
    }

    #[test]
    fn signals_start_every_listening_flow() {
        let flows = vec![
            flow(1, vec![Trigger::TagAdded { tag: "vip".into() }]),
            flow(
                2,
                vec![Trigger::Event {
                    name: "order_shipped".into(),
                }],
            ),
            flow(
                3,
                vec![Trigger::Event {
                    name: "order_shipped".into(),
                }],
            ),
        ];
        assert_eq!(for_signal(&flows, "event", "order_shipped").len(), 2);
        assert_eq!(for_signal(&flows, "tag_added", "vip").len(), 1);
        assert!(for_signal(&flows, "tag_added", "other").is_empty());
    }
}
