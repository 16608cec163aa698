use super::*;
use voronka_core::message::{Button, OutboundMessage, Sender};
use voronka_core::{ContactId, IdentityId};
use voronka_store::Subscription;

fn event(kind: InboundKind) -> InboundEvent {
    InboundEvent {
        provider_event_id: "100".into(),
        sender: Sender {
            external_id: "42".into(),
            first_name: Some("Anna".into()),
            ..Default::default()
        },
        at: 1_700_000_000,
        kind,
    }
}

fn identity(state: SubscriptionState) -> Identity {
    Identity {
        id: IdentityId(7),
        contact_id: ContactId(3),
        channel_id: ChannelId(1),
        external_id: "42".into(),
        subscription: Subscription {
            state,
            topics: vec![],
            proof: None,
            updated_at: Timestamp::now(),
        },
        created_at: Timestamp::now(),
    }
}

fn cx<'a>(settings: &'a ChannelSettings, identity: Option<&'a Identity>) -> Context<'a> {
    Context {
        channel_id: ChannelId(1),
        kind: ChannelKind::Telegram,
        settings,
        identity,
        answered_payload: None,
        now: Timestamp::now(),
    }
}

fn text(t: &str) -> InboundEvent {
    event(InboundKind::Text {
        message_id: "5".into(),
        text: t.into(),
    })
}

#[test]
fn telegram_start_is_an_opt_in_with_the_start_message_as_proof() {
    let settings = ChannelSettings {
        welcome: Some(OutboundMessage {
            text: Some("Hi".into()),
            buttons: vec![Button::Postback {
                label: "Go".into(),
                payload: "GO".into(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = event(InboundKind::Start {
        message_id: "1".into(),
        text: "/start ref_summer".into(),
        reference: Some("ref_summer".into()),
    });
    let p = plan(&e, &cx(&settings, None));
    assert_eq!(p.apply.source.as_deref(), Some("ref_summer"));
    let sub = p.apply.subscription.expect("subscribes");
    assert_eq!(sub.state(), SubscriptionState::Subscribed);
    let proof = sub.proof().expect("proof");
    assert_eq!(proof.source, "telegram_start:ref_summer");
    assert_eq!(proof.text_shown.as_deref(), Some("/start ref_summer"));
    assert_eq!(proof.message_id.as_deref(), Some("1"));
    assert_eq!(p.apply.replies.len(), 1);
    assert_eq!(p.apply.replies[0].source, "welcome");
    assert_eq!(p.apply.replies[0].purpose, Purpose::Response);
}

#[test]
fn web_chat_start_is_not_consent() {
    let settings = ChannelSettings::default();
    let mut c = cx(&settings, None);
    c.kind = ChannelKind::Webchat;
    let e = event(InboundKind::Start {
        message_id: "1".into(),
        text: "".into(),
        reference: None,
    });
    assert!(plan(&e, &c).apply.subscription.is_none());
}

#[test]
fn stop_words_unsubscribe_and_confirm_in_any_case_or_punctuation() {
    let settings = ChannelSettings::default();
    let id = identity(SubscriptionState::Subscribed);
    for t in ["стоп", "STOP!", " Stop. ", "Отписаться"] {
        let mut c = cx(&settings, Some(&id));
        // STOP wins even over a pending button answer.
        c.answered_payload = Some("YES".into());
        let p = plan(&text(t), &c);
        let sub = p.apply.subscription.expect(t);
        assert_eq!(sub.state(), SubscriptionState::Unsubscribed);
        assert_eq!(p.apply.replies.len(), 1, "{t}");
        assert_eq!(p.apply.replies[0].source, "stop_reply");
        assert!(!p
            .apply
            .events
            .iter()
            .any(|(k, _)| *k == EventKind::ButtonPressed));
    }
}

#[test]
fn start_words_resubscribe_with_proof() {
    let settings = ChannelSettings::default();
    let id = identity(SubscriptionState::Unsubscribed);
    let p = plan(&text("СТАРТ"), &cx(&settings, Some(&id)));
    let sub = p.apply.subscription.expect("resubscribes");
    assert_eq!(sub.state(), SubscriptionState::Subscribed);
    assert_eq!(sub.proof().expect("proof").source, "start_word");
    assert_eq!(p.apply.replies[0].source, "start_reply");
}

#[test]
fn answers_become_button_presses_and_others_get_the_auto_reply() {
    let settings = ChannelSettings {
        auto_reply: Some(OutboundMessage::text("We will answer soon")),
        ..Default::default()
    };
    let id = identity(SubscriptionState::Subscribed);
    let mut c = cx(&settings, Some(&id));
    c.answered_payload = Some("YES".into());
    let p = plan(&text("2"), &c);
    assert!(p.apply.replies.is_empty());
    assert!(p
        .apply
        .events
        .iter()
        .any(|(k, d)| *k == EventKind::ButtonPressed && d["payload"] == "YES"));
    let p = plan(&text("hello"), &cx(&settings, Some(&id)));
    assert_eq!(p.apply.replies[0].source, "auto_reply");
    assert!(p.apply.subscription.is_none());
}

#[test]
fn blocking_and_unblocking() {
    let settings = ChannelSettings::default();
    let p = plan(&event(InboundKind::Blocked), &cx(&settings, None));
    assert_eq!(
        p.apply.subscription.expect("blocks").state(),
        SubscriptionState::Blocked
    );
    let blocked = identity(SubscriptionState::Blocked);
    let p = plan(
        &event(InboundKind::Unblocked),
        &cx(&settings, Some(&blocked)),
    );
    assert_eq!(
        p.apply.subscription.expect("unblocks").state(),
        SubscriptionState::Unsubscribed
    );
}

#[test]
fn presses_are_acknowledged() {
    let settings = ChannelSettings::default();
    let mut c = cx(&settings, None);
    c.answered_payload = Some("GO".into());
    let e = event(InboundKind::ButtonPressed {
        callback_id: Some("cb1".into()),
        data: "p:GO".into(),
    });
    let p = plan(&e, &c);
    assert_eq!(p.acknowledge.as_deref(), Some("cb1"));
    assert!(p
        .apply
        .events
        .iter()
        .any(|(k, d)| *k == EventKind::ButtonPressed && d["payload"] == "GO"));
}

#[test]
fn provider_times_in_the_future_are_clamped_to_now() {
    let settings = ChannelSettings::default();
    let mut e = event(InboundKind::Start {
        message_id: "1".into(),
        text: "/start".into(),
        reference: None,
    });
    e.at = i64::MAX / 2;
    let p = plan(&e, &cx(&settings, None));
    assert!(p.apply.subscription.is_some());
}
