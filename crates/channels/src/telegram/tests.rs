use super::*;
use voronka_core::message::Media;

fn adapter(secret: Option<&str>) -> TelegramAdapter {
    let client = TelegramClient::new(reqwest::Client::new(), "http://127.0.0.1:9", "1:T");
    TelegramAdapter::new(client, secret.map(String::from))
}

fn ctx() -> RenderContext {
    RenderContext { outbox_id: 77 }
}

fn postback(label: &str, payload: &str) -> Button {
    Button::Postback {
        label: label.into(),
        payload: payload.into(),
    }
}

fn reply(label: &str) -> Button {
    Button::Reply {
        label: label.into(),
        payload: None,
    }
}

fn url(label: &str) -> Button {
    Button::Url {
        label: label.into(),
        url: "https://example.com/x?a=1&b=2".into(),
    }
}

fn parse(v: Value) -> Vec<InboundEvent> {
    adapter(None)
        .parse(v.to_string().as_bytes())
        .expect("parses")
}

fn one(v: Value) -> InboundEvent {
    let mut events = parse(v);
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

fn user() -> Value {
    json!({
        "id": 5_000_000_001_i64, "is_bot": false, "first_name": "Anna", "last_name": "K",
        "username": "anna_k", "language_code": "ru"
    })
}

fn private_chat() -> Value {
    json!({ "id": 5_000_000_001_i64, "first_name": "Anna", "last_name": "K",
            "username": "anna_k", "type": "private" })
}

fn message_update(fields: Value) -> Value {
    let mut m = json!({
        "message_id": 11, "from": user(), "chat": private_chat(), "date": 1_700_000_000
    });
    for (k, v) in fields.as_object().expect("object") {
        m[k] = v.clone();
    }
    json!({ "update_id": 900_001, "message": m })
}

// --- verify ---------------------------------------------------------------------------

#[test]
fn verify_checks_the_secret_header() {
    let a = adapter(Some("s3cret_-token"));
    let mut h = http::HeaderMap::new();
    assert!(matches!(a.verify(&h, b"{}"), Err(VerifyError::Missing(_))));
    h.insert(SECRET_HEADER, http::HeaderValue::from_static("wrong"));
    assert_eq!(a.verify(&h, b"{}"), Err(VerifyError::Mismatch));
    h.insert(
        "X-Telegram-Bot-Api-Secret-Token",
        http::HeaderValue::from_static("s3cret_-tokeN"),
    );
    assert_eq!(a.verify(&h, b"{}"), Err(VerifyError::Mismatch));
    h.insert(
        "X-Telegram-Bot-Api-Secret-Token",
        http::HeaderValue::from_static("s3cret_-token"),
    );
    assert_eq!(a.verify(&h, b"{}"), Ok(()));
    // Errors never echo what was expected or received.
    h.insert(SECRET_HEADER, http::HeaderValue::from_static("guess"));
    let e = a.verify(&h, b"{}").expect_err("mismatch").to_string();
    assert!(!e.contains("s3cret") && !e.contains("guess"), "{e}");
}

#[test]
fn verify_without_a_configured_secret_refuses_everything() {
    let a = adapter(None);
    let mut h = http::HeaderMap::new();
    h.insert(SECRET_HEADER, http::HeaderValue::from_static(""));
    assert!(matches!(a.verify(&h, b"{}"), Err(VerifyError::Missing(_))));
}

#[test]
fn webhook_secrets_are_random_and_well_formed() {
    let a = webhook_secret();
    let b = webhook_secret();
    assert_ne!(a, b);
    assert_eq!(a.len(), 32);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
}

// --- parse ----------------------------------------------------------------------------

#[test]
fn parses_text() {
    let e = one(message_update(json!({ "text": "Hello <3" })));
    assert_eq!(e.provider_event_id, "900001");
    assert_eq!(e.at, 1_700_000_000);
    assert_eq!(
        e.sender,
        Sender {
            external_id: "5000000001".into(),
            first_name: Some("Anna".into()),
            last_name: Some("K".into()),
            username: Some("anna_k".into()),
            language: Some("ru".into()),
        }
    );
    assert_eq!(
        e.kind,
        InboundKind::Text {
            message_id: "11".into(),
            text: "Hello <3".into()
        }
    );
}

#[test]
fn parses_start_commands() {
    let start = |text: &str| match one(message_update(json!({ "text": text }))).kind {
        InboundKind::Start {
            reference,
            text: t,
            message_id,
        } => {
            assert_eq!(t, text);
            assert_eq!(message_id, "11");
            Some(reference)
        }
        _ => None,
    };
    assert_eq!(start("/start"), Some(None));
    assert_eq!(
        start("/start ref_summer-24"),
        Some(Some("ref_summer-24".into()))
    );
    assert_eq!(start("/start@voronka_bot"), Some(None));
    assert_eq!(start("/start@voronka_bot abc"), Some(Some("abc".into())));
    assert_eq!(start("/start bad payload!"), Some(None));
    assert_eq!(start(&format!("/start {}", "a".repeat(65))), Some(None));
    assert_eq!(
        start(&format!("/start {}", "a".repeat(64))),
        Some(Some("a".repeat(64)))
    );
    assert_eq!(start("/started"), None);
    assert_eq!(start("hello /start"), None);
}

#[test]
fn parses_own_contact_and_treats_other_contacts_as_attachments() {
    let own = one(message_update(json!({
        "contact": { "phone_number": "79991234567", "first_name": "Anna",
                     "user_id": 5_000_000_001_i64 }
    })));
    assert_eq!(
        own.kind,
        InboundKind::ContactShared {
            message_id: "11".into(),
            phone: "79991234567".into()
        }
    );
    let other = one(message_update(json!({
        "contact": { "phone_number": "+15550001", "first_name": "Bob", "user_id": 42 }
    })));
    assert!(
        matches!(other.kind, InboundKind::Media { ref media_type, .. } if media_type == "contact")
    );
}

#[test]
fn parses_media_kinds() {
    let photo = one(message_update(json!({
        "photo": [
            { "file_id": "a", "file_unique_id": "ua", "width": 90, "height": 90 },
            { "file_id": "b", "file_unique_id": "ub", "width": 800, "height": 800, "file_size": 1000 }
        ],
        "caption": "look"
    })));
    assert_eq!(
        photo.kind,
        InboundKind::Media {
            message_id: "11".into(),
            media_type: "image".into(),
            caption: Some("look".into())
        }
    );
    let cases = [
        (
            json!({ "document": { "file_id": "d", "file_unique_id": "u", "file_name": "a.pdf", "mime_type": "application/pdf" } }),
            "file",
        ),
        (
            json!({ "animation": { "file_id": "g", "file_unique_id": "u", "width": 1, "height": 1, "duration": 1 },
                 "document": { "file_id": "g", "file_unique_id": "u" } }),
            "animation",
        ),
        (
            json!({ "voice": { "file_id": "v", "file_unique_id": "u", "duration": 3 } }),
            "voice",
        ),
        (
            json!({ "video": { "file_id": "v", "file_unique_id": "u", "width": 1, "height": 1, "duration": 3 } }),
            "video",
        ),
        (
            json!({ "video_note": { "file_id": "v", "file_unique_id": "u", "length": 1, "duration": 3 } }),
            "video_note",
        ),
        (
            json!({ "audio": { "file_id": "v", "file_unique_id": "u", "duration": 3 } }),
            "audio",
        ),
        (
            json!({ "sticker": { "file_id": "s", "file_unique_id": "u", "type": "regular", "width": 512, "height": 512, "is_animated": false, "is_video": false } }),
            "sticker",
        ),
    ];
    for (fields, expected) in cases {
        match one(message_update(fields)).kind {
            InboundKind::Media { media_type, .. } => assert_eq!(media_type, expected),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[test]
fn ignores_messages_we_do_not_use() {
    assert!(parse(message_update(
        json!({ "location": { "latitude": 1.0, "longitude": 2.0 } })
    ))
    .is_empty());
    let edited = json!({
        "update_id": 5,
        "edited_message": { "message_id": 1, "from": user(), "chat": private_chat(),
                            "date": 1, "edit_date": 2, "text": "fixed" }
    });
    assert!(parse(edited).is_empty());
    let reaction = json!({ "update_id": 6, "message_reaction": { "chat": private_chat() } });
    assert!(parse(reaction).is_empty());
}

#[test]
fn ignores_groups_and_channels() {
    let mut u = message_update(json!({ "text": "hi all" }));
    u["message"]["chat"] = json!({ "id": -100123, "type": "supergroup", "title": "G" });
    assert!(parse(u).is_empty());
    let q = json!({
        "update_id": 7,
        "callback_query": {
            "id": "q1", "from": user(), "chat_instance": "ci", "data": "p:YES",
            "message": { "message_id": 3, "date": 1, "chat": { "id": -5, "type": "group", "title": "G" } }
        }
    });
    assert!(parse(q).is_empty());
}

#[test]
fn parses_callback_queries() {
    let q = json!({
        "update_id": 8,
        "callback_query": {
            "id": "4382bfdwdsb323b2d9", "from": user(), "chat_instance": "-123", "data": "p:YES",
            "message": { "message_id": 3, "from": { "id": 1, "is_bot": true, "first_name": "Bot" },
                         "date": 1_600_000_000, "chat": private_chat(), "text": "Pick" }
        }
    });
    let before = crate::unix_now();
    let e = one(q);
    assert_eq!(e.provider_event_id, "8");
    assert_eq!(e.sender.external_id, "5000000001");
    assert_eq!(e.sender.first_name.as_deref(), Some("Anna"));
    assert!(e.at >= before);
    assert_eq!(
        e.kind,
        InboundKind::ButtonPressed {
            callback_id: Some("4382bfdwdsb323b2d9".into()),
            data: "p:YES".into()
        }
    );
    // Inline-mode buttons have no message: the presser is the sender.
    let inline = json!({
        "update_id": 9,
        "callback_query": { "id": "q2", "from": user(), "inline_message_id": "im",
                            "chat_instance": "ci", "data": "o:77:1" }
    });
    let e = one(inline);
    assert_eq!(e.sender.external_id, "5000000001");
    // An old message the bot can no longer access still names its chat.
    let inaccessible = json!({
        "update_id": 10,
        "callback_query": { "id": "q3", "from": user(), "chat_instance": "ci", "data": "p:X",
                            "message": { "message_id": 3, "date": 0, "chat": private_chat() } }
    });
    assert_eq!(parse(inaccessible).len(), 1);
    let game = json!({
        "update_id": 11,
        "callback_query": { "id": "q4", "from": user(), "chat_instance": "ci", "game_short_name": "g" }
    });
    assert!(parse(game).is_empty());
}

#[test]
fn parses_block_and_unblock() {
    let change = |old: &str, new: &str| {
        json!({
            "update_id": 12,
            "my_chat_member": {
                "chat": private_chat(), "from": user(), "date": 1_700_000_100,
                "old_chat_member": { "status": old, "user": { "id": 1, "is_bot": true, "first_name": "Bot" } },
                "new_chat_member": { "status": new, "user": { "id": 1, "is_bot": true, "first_name": "Bot" },
                                     "until_date": 0 }
            }
        })
    };
    let blocked = one(change("member", "kicked"));
    assert_eq!(blocked.kind, InboundKind::Blocked);
    assert_eq!(blocked.at, 1_700_000_100);
    assert_eq!(blocked.sender.external_id, "5000000001");
    assert_eq!(one(change("kicked", "member")).kind, InboundKind::Unblocked);
    assert_eq!(one(change("left", "member")).kind, InboundKind::Unblocked);
    assert!(parse(change("member", "administrator")).is_empty());
}

#[test]
fn malformed_bodies_get_precise_errors() {
    let a = adapter(None);
    let msg = |body: &str| match a.parse(body.as_bytes()) {
        Err(ParseError::Malformed(m)) => m,
        other => panic!("{body}: {other:?}"),
    };
    assert!(msg("not json").contains("not JSON"));
    assert!(msg("[1]").contains("JSON object"));
    assert!(msg(r#"{"message":{}}"#).contains("update_id"));
    assert!(msg(r#"{"update_id":"7"}"#).contains("integer"));
    let m = msg(
        r#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":"x","type":"private"}}}"#,
    );
    assert!(m.contains("message.chat.id"), "{m}");
}

#[test]
fn unknown_fields_are_ignored() {
    let mut u =
        message_update(json!({ "text": "hi", "entities": [], "brand_new_field": {"x": 1} }));
    u["brand_new_top_level"] = json!(true);
    assert_eq!(parse(u).len(), 1);
}

// --- render ---------------------------------------------------------------------------

#[test]
fn html_is_escaped() {
    let parts = render_message(&OutboundMessage::text(r#"<b>&"x"</b>"#), &ctx());
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].method, "sendMessage");
    assert_eq!(
        parts[0].body,
        json!({ "text": "&lt;b&gt;&amp;&quot;x&quot;&lt;/b&gt;", "parse_mode": "HTML" })
    );
}

#[test]
fn long_text_is_split_with_buttons_on_the_last_part_only() {
    let sentence = "Lorem ipsum & dolor sit amet <consectetur>. ";
    let text: String = sentence
        .repeat(10_000 / sentence.len() + 1)
        .chars()
        .take(10_000)
        .collect();
    let m = OutboundMessage {
        text: Some(text.clone()),
        buttons: vec![postback("Yes", "YES")],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    assert_eq!(parts.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.method, "sendMessage");
        let shown = p.body["text"].as_str().expect("text");
        let plain = shown
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        assert!(plain.chars().count() <= 4096);
        assert_eq!(p.body.get("reply_markup").is_some(), i == 2, "part {i}");
    }
    assert_eq!(
        parts[2].body["reply_markup"],
        json!({ "inline_keyboard": [[{ "text": "Yes", "callback_data": "p:YES" }]] })
    );
}

#[test]
fn callback_data_is_inline_when_short_and_a_reference_when_long() {
    let long = "x".repeat(63); // "p:" + 63 = 65 bytes
    let m = OutboundMessage {
        text: Some("Pick".into()),
        buttons: vec![postback("Short", "S"), url("Site"), postback("Long", &long)],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    let rows = &parts[0].body["reply_markup"]["inline_keyboard"];
    assert_eq!(
        rows,
        &json!([[
            { "text": "Short", "callback_data": "p:S" },
            { "text": "Site", "url": "https://example.com/x?a=1&b=2" },
            { "text": "Long", "callback_data": "o:77:1" }
        ]])
    );
    assert_eq!(encode_callback_data(&"y".repeat(62), 1, 0).len(), 64);
    assert_eq!(
        decode_callback_data("p:S"),
        CallbackRef::Payload("S".into())
    );
    assert_eq!(
        decode_callback_data("p:"),
        CallbackRef::Payload(String::new())
    );
    assert_eq!(
        decode_callback_data("o:77:1"),
        CallbackRef::Outbox {
            outbox_id: 77,
            index: 1
        }
    );
    assert_eq!(
        decode_callback_data("o:77:x"),
        CallbackRef::Unknown("o:77:x".into())
    );
    assert_eq!(
        decode_callback_data("zzz"),
        CallbackRef::Unknown("zzz".into())
    );
    // Multi-byte payloads count bytes, not characters.
    let cyrillic = "д".repeat(32); // 64 bytes
    assert!(encode_callback_data(&cyrillic, 5, 3).starts_with("o:5:3"));
}

#[test]
fn long_labels_or_many_buttons_get_one_row_each() {
    let m = OutboundMessage {
        text: Some("Pick".into()),
        buttons: vec![postback("A rather long label", "A"), postback("B", "B")],
        ..Default::default()
    };
    let rows = &render_message(&m, &ctx())[0].body["reply_markup"]["inline_keyboard"];
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    let four = OutboundMessage {
        text: Some("Pick".into()),
        buttons: (1..=4).map(|i| postback(&i.to_string(), "x")).collect(),
        ..Default::default()
    };
    let rows = &render_message(&four, &ctx())[0].body["reply_markup"]["inline_keyboard"];
    assert_eq!(rows.as_array().map(Vec::len), Some(4));
    let long = "L".repeat(100);
    let labels = OutboundMessage {
        text: Some("Pick".into()),
        buttons: vec![postback(&long, "x")],
        ..Default::default()
    };
    let text = render_message(&labels, &ctx())[0].body["reply_markup"]["inline_keyboard"][0][0]
        ["text"]
        .as_str()
        .map(|t| t.chars().count());
    assert_eq!(text, Some(64));
}

#[test]
fn reply_buttons_become_a_one_time_reply_keyboard() {
    let m = OutboundMessage {
        text: Some("Continue?".into()),
        buttons: vec![reply("Yes"), reply("No")],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    assert_eq!(
        parts[0].body["reply_markup"],
        json!({
            "keyboard": [[{ "text": "Yes" }, { "text": "No" }]],
            "resize_keyboard": true,
            "one_time_keyboard": true
        })
    );
}

#[test]
fn mixed_reply_and_inline_buttons_are_all_inline() {
    let m = OutboundMessage {
        text: Some("Continue?".into()),
        buttons: vec![reply("Yes"), url("Site")],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    assert_eq!(
        parts[0].body["reply_markup"]["inline_keyboard"][0][0],
        json!({ "text": "Yes", "callback_data": "p:Yes" })
    );
}

#[test]
fn images_carry_the_text_as_caption_when_it_fits() {
    let image = |text: &str| OutboundMessage {
        text: Some(text.into()),
        media: Some(Media {
            kind: MediaKind::Image,
            url: "https://example.com/a.png".into(),
            file_name: None,
        }),
        buttons: vec![postback("Buy", "BUY")],
        cards: vec![],
    };
    let parts = render_message(&image("Nice & cheap"), &ctx());
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].method, "sendPhoto");
    assert_eq!(parts[0].body["photo"], "https://example.com/a.png");
    assert_eq!(parts[0].body["caption"], "Nice &amp; cheap");
    assert!(parts[0].body.get("reply_markup").is_some());

    let long = "word ".repeat(300);
    let parts = render_message(&image(&long), &ctx());
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].method, "sendPhoto");
    assert!(parts[0].body.get("caption").is_none());
    assert_eq!(parts[1].method, "sendMessage");
    assert!(parts[0].body.get("reply_markup").is_none());
    assert!(parts[1].body.get("reply_markup").is_some());

    let file = OutboundMessage {
        media: Some(Media {
            kind: MediaKind::File,
            url: "https://example.com/p.pdf".into(),
            file_name: Some("p.pdf".into()),
        }),
        ..Default::default()
    };
    let parts = render_message(&file, &ctx());
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].method, "sendDocument");
    assert_eq!(
        parts[0].body,
        json!({ "document": "https://example.com/p.pdf" })
    );
}

#[test]
fn cards_are_one_message_each_with_continued_numbering() {
    let m = OutboundMessage {
        text: Some("Plans".into()),
        buttons: vec![postback("Later", "LATER"), url("Site")],
        cards: vec![
            Card {
                title: "Basic <1>".into(),
                subtitle: Some("Cheap & cheerful".into()),
                image_url: Some("https://example.com/b.png".into()),
                buttons: vec![postback("Buy", &"B".repeat(80)), url("More")],
            },
            Card {
                title: "Pro".into(),
                subtitle: None,
                image_url: None,
                buttons: vec![reply("Pro please")],
            },
        ],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].method, "sendMessage");
    assert!(parts[0].body.get("reply_markup").is_some());
    assert_eq!(parts[1].method, "sendPhoto");
    assert_eq!(
        parts[1].body["caption"],
        "<b>Basic &lt;1&gt;</b>\nCheap &amp; cheerful"
    );
    assert_eq!(
        parts[1].body["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        "o:77:1"
    );
    assert_eq!(parts[2].method, "sendMessage");
    assert_eq!(parts[2].body["text"], "<b>Pro</b>");
    // Reply buttons on cards are inline: a card is its own message.
    assert_eq!(
        parts[2].body["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        "p:Pro please"
    );
    // The numbering matches what the server resolves through choices().
    let choices = m.choices();
    assert_eq!(choices[1].payload(), Some("B".repeat(80).as_str()));
}

#[test]
fn message_buttons_join_the_last_card_when_there_is_no_text() {
    let m = OutboundMessage {
        cards: vec![Card {
            title: "Only".into(),
            subtitle: None,
            image_url: None,
            buttons: vec![postback("Card", "C")],
        }],
        buttons: vec![reply("Menu")],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    assert_eq!(parts.len(), 1);
    assert_eq!(
        parts[0].body["reply_markup"],
        json!({ "inline_keyboard": [
            [{ "text": "Card", "callback_data": "p:C" }],
            [{ "text": "Menu", "callback_data": "p:Menu" }]
        ] })
    );
}

#[test]
fn long_card_captions_are_cut() {
    let m = OutboundMessage {
        cards: vec![Card {
            title: "T".into(),
            subtitle: Some("s".repeat(2000)),
            image_url: Some("https://example.com/i.png".into()),
            buttons: vec![],
        }],
        ..Default::default()
    };
    let parts = render_message(&m, &ctx());
    let caption = parts[0].body["caption"].as_str().expect("caption");
    let plain = caption.replace("<b>", "").replace("</b>", "");
    assert_eq!(plain.chars().count(), 1024);
    assert!(plain.ends_with('…'));
}

#[test]
fn an_empty_message_renders_to_nothing() {
    assert!(render_message(&OutboundMessage::default(), &ctx()).is_empty());
}

#[test]
fn capabilities_are_telegrams() {
    let a = adapter(None);
    assert_eq!(a.kind(), ChannelKind::Telegram);
    let c = a.capabilities();
    assert_eq!(
        (c.text_limit, c.caption_limit, c.payload_limit_bytes),
        (4096, 1024, 64)
    );
    assert!(!c.cards && !c.read_receipts && !c.delivery_receipts);
    assert_eq!(
        (c.rate_per_account, c.rate_per_chat, c.chat_burst),
        (30.0, 1.0, 3)
    );
}

#[tokio::test]
async fn send_refuses_a_bad_chat_id_without_calling() {
    let a = adapter(None);
    let p = render_message(&OutboundMessage::text("hi"), &ctx()).remove(0);
    assert!(matches!(
        a.send("@someone", &p).await,
        Err(SendError::Refused { .. })
    ));
}
