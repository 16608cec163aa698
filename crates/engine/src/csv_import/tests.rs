use super::*;
use crate::fake_store::{FakeStore, REFUSED_PHONE};
use std::sync::Mutex;
use voronka_core::field::{FieldSpec, FieldType};
use voronka_core::FieldId;

fn defs() -> Vec<FieldDefinition> {
    let def = |id, key: &str, t| FieldDefinition {
        id: FieldId(id),
        spec: FieldSpec {
            key: key.into(),
            label: key.into(),
            field_type: t,
            choices: vec![],
        },
    };
    vec![
        def(1, "score", FieldType::Number),
        def(2, "city", FieldType::Text),
    ]
}

fn header(cells: &[&str]) -> csv::StringRecord {
    csv::StringRecord::from(cells.to_vec())
}

fn layout(cells: &[&str], options: &ImportOptions) -> Result<Layout, String> {
    Layout::from_header(&header(cells), &defs(), options).map_err(|e| e.to_string())
}

fn parse(
    cells: &[&str],
    row: &[&str],
    options: &ImportOptions,
) -> Result<(ImportRow, Vec<RowIssue>), RowIssue> {
    let l = layout(cells, options).expect("header is valid");
    l.parse_row(&header(row), 2, options, Timestamp::now())
}

#[test]
fn headers_map_case_insensitively_with_fields_and_aliases() {
    let opts = ImportOptions {
        mapping: vec![
            ("Telefon".into(), "phone".into()),
            ("Notes".into(), "ignore".into()),
        ],
        ..ImportOptions::default()
    };
    let l = layout(
        &[
            " First_Name ",
            "TELEFON",
            "field.score",
            "City",
            "notes",
            "id",
        ],
        &opts,
    )
    .expect("valid");
    let targets: Vec<Target> = l.columns.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        targets,
        vec![
            Target::FirstName,
            Target::Phone,
            Target::Field(0),
            Target::Field(1),
            Target::Ignore,
            Target::Ignore
        ]
    );
    assert_eq!(l.columns[0].1, "First_Name");
}

#[test]
fn bad_headers_are_named() {
    let o = ImportOptions::default();
    let e = layout(&["phone", "Nickname"], &o).expect_err("unknown");
    assert!(e.contains("unknown column `Nickname`"), "{e}");
    let e = layout(&["phone", "field.age"], &o).expect_err("undefined field");
    assert!(e.contains("no custom field `age`"), "{e}");
    let e = layout(&["phone", "Phone "], &o).expect_err("duplicate");
    assert!(e.contains("duplicate column `Phone`"), "{e}");
    let e = layout(&["first_name", "tags"], &o).expect_err("nothing identifies");
    assert!(e.contains("`phone`, `email` or `external_id`"), "{e}");
    let e = layout(&["external_id"], &o).expect_err("no channel");
    assert!(e.contains("channel_id"), "{e}");
    let with_channel = ImportOptions {
        channel: Some(ChannelId(4)),
        ..ImportOptions::default()
    };
    assert!(layout(&["external_id"], &with_channel).is_ok());
    let bad_map = ImportOptions {
        mapping: vec![("x".into(), "nonsense".into())],
        ..ImportOptions::default()
    };
    let e = layout(&["phone"], &bad_map).expect_err("bad mapping");
    assert!(e.contains("mapping `x=nonsense`"), "{e}");
}

#[test]
fn rows_are_validated_and_normalised() {
    let cols = [
        "phone",
        "email",
        "first_name",
        "tags",
        "score",
        "city",
        "language",
    ];
    let o = ImportOptions {
        source: Some("import:crm".into()),
        ..ImportOptions::default()
    };
    let (row, warnings) = parse(
        &cols,
        &[
            "+7 (916) 123-45-67",
            "",
            " Ivan ",
            "vip; new ;vip",
            "42,5",
            "Moscow",
            "en_gb",
        ],
        &o,
    )
    .expect("valid row");
    assert!(warnings.is_empty());
    assert_eq!(row.profile.phone.as_deref(), Some("+79161234567"));
    assert_eq!(row.profile.email, None, "an empty cell is no value");
    assert_eq!(row.profile.first_name.as_deref(), Some("Ivan"));
    assert_eq!(row.profile.language.as_deref(), Some("en-GB"));
    assert_eq!(row.tags, vec!["vip".to_string(), "new".to_string()]);
    assert_eq!(row.fields.len(), 2);
    assert_eq!(row.fields[0].num(), Some(42.5));
    assert_eq!(row.fields[1].text(), Some("Moscow"));
    assert_eq!(row.source.as_deref(), Some("import:crm"));
    assert_eq!(row.identity, None);
    assert_eq!(row.subscription, None);

    let (row, _) = parse(&["email", "tags"], &["a@b.ru", "a,b"], &o).expect("comma tags");
    assert_eq!(row.tags, vec!["a".to_string(), "b".to_string()]);
    let (row, _) = parse(&["phone"], &["'+79161234567"], &o).expect("escaped cell");
    assert_eq!(row.profile.phone.as_deref(), Some("+79161234567"));

    let e = parse(&cols, &["12", "", "", "", "", "", ""], &o).expect_err("bad phone");
    assert_eq!((e.line, e.column.as_deref()), (2, Some("phone")));
    let e = parse(&["Phone", "score"], &["+79161234567", "many"], &o).expect_err("bad number");
    assert_eq!(e.column.as_deref(), Some("score"));
    assert!(e.reason.contains("not a number"), "{}", e.reason);
    let e = parse(&["phone", "first_name"], &["", "Ivan"], &o).expect_err("nothing identifies");
    assert!(
        e.reason.contains("no phone, email nor external_id"),
        "{}",
        e.reason
    );
    let e = parse(&["phone"], &["+79161234567", "extra"], &o).expect_err("too many cells");
    assert!(e.reason.contains("2 cells"), "{}", e.reason);
    let e = parse(
        &["email", "channel_id", "external_id"],
        &["a@b.ru", "x", "1"],
        &o,
    )
    .expect_err("channel id");
    assert_eq!(e.column.as_deref(), Some("channel_id"));
}

const SUB: [&str; 7] = [
    "channel_id",
    "external_id",
    "subscribed",
    "consent_source",
    "consent_at",
    "consent_ip",
    "topics",
];

#[test]
fn subscribed_needs_both_proof_columns() {
    let o = ImportOptions::default();
    let (row, w) = parse(
        &SUB,
        &[
            "3",
            "42",
            "да",
            "landing",
            "2026-01-02 03:04:05",
            "10.0.0.1",
            "news; sales",
        ],
        &o,
    )
    .expect("valid");
    assert!(w.is_empty());
    assert_eq!(row.identity, Some((ChannelId(3), "42".to_string())));
    let sub = row.subscription.expect("subscribed");
    assert_eq!(sub.state(), SubscriptionState::Subscribed);
    assert_eq!(sub.topics(), ["news".to_string(), "sales".to_string()]);
    let proof = sub.proof().expect("proof");
    assert_eq!(proof.source, "landing");
    assert_eq!(proof.at.to_string(), "2026-01-02T03:04:05Z");
    assert_eq!(proof.ip.as_deref(), Some("10.0.0.1"));

    let (row, _) = parse(
        &SUB,
        &[
            "3",
            "42",
            "yes",
            "landing",
            "2026-01-02T06:04:05+03:00",
            "",
            "",
        ],
        &o,
    )
    .expect("rfc3339");
    assert_eq!(
        row.subscription
            .and_then(|s| s.proof().map(|p| p.at.to_string()))
            .as_deref(),
        Some("2026-01-02T03:04:05Z")
    );

    for (src, at) in [("landing", ""), ("", "2026-01-02 03:04:05"), ("", "")] {
        let (row, w) = parse(&SUB, &["3", "42", "TRUE", src, at, "", ""], &o).expect("imported");
        assert_eq!(row.subscription, None, "{src}/{at}");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, NO_PROOF_WARNING);
        assert_eq!(w[0].column.as_deref(), Some("subscribed"));
    }

    let (row, w) = parse(
        &SUB,
        &["3", "42", "", "landing", "2026-01-02 03:04:05", "", ""],
        &o,
    )
    .expect("unknown");
    assert!(w.is_empty());
    assert_eq!(row.subscription, None);

    let with_source = ImportOptions {
        source: Some("import:old-crm".into()),
        ..ImportOptions::default()
    };
    for (opts, expect) in [(&o, "import"), (&with_source, "import:old-crm")] {
        let (row, _) =
            parse(&SUB, &["3", "42", "нет", "", "", "", ""], opts).expect("unsubscribed");
        let sub = row.subscription.expect("explicit change");
        assert_eq!(sub.state(), SubscriptionState::Unsubscribed);
        assert_eq!(sub.proof().map(|p| p.source.as_str()), Some(expect));
    }

    let e = parse(&SUB, &["3", "42", "maybe", "", "", "", ""], &o).expect_err("not yes/no");
    assert_eq!(e.column.as_deref(), Some("subscribed"));
    let e =
        parse(&SUB, &["3", "42", "1", "landing", "yesterday", "", ""], &o).expect_err("bad time");
    assert_eq!(e.column.as_deref(), Some("consent_at"));
    let e = parse(
        &SUB,
        &[
            "3",
            "42",
            "1",
            "landing",
            "2026-01-02 03:04:05",
            "not-ip",
            "",
        ],
        &o,
    )
    .expect_err("bad ip");
    assert_eq!(e.column.as_deref(), Some("consent_ip"));
    let e = parse(
        &SUB,
        &["3", "42", "1", "landing", "2999-01-01 00:00:00", "", ""],
        &o,
    )
    .expect_err("future");
    assert_eq!(e.column.as_deref(), Some("consent_at"));
    let (_, w) = parse(&["phone", "subscribed"], &["+79161234567", "1"], &o).expect("no identity");
    assert!(
        w[0].reason.contains("no channel identity"),
        "{}",
        w[0].reason
    );
}

async fn run(
    store: FakeStore,
    csv: &str,
    options: ImportOptions,
) -> (
    Result<ImportReport, ImportError>,
    Arc<FakeStore>,
    Vec<ImportProgress>,
) {
    let store = Arc::new(store);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let report = import_csv(
        store.clone(),
        WorkspaceId(1),
        std::io::Cursor::new(csv.as_bytes().to_vec()),
        options,
        Box::new(move |p| s2.lock().expect("lock").push(p)),
    )
    .await;
    let seen = seen.lock().expect("lock").clone();
    (report, store, seen)
}

#[tokio::test]
async fn line_numbers_count_multi_line_cells_and_bom_is_ignored() {
    let csv = "\u{feff}\"phone\",city\n+79160000001,\"two\nlines\"\n12,Bad\n+79160000003,\"x\n\ny\"\nnope,Bad\n";
    let (report, store, _) = run(
        FakeStore {
            defs: defs(),
            ..FakeStore::default()
        },
        csv,
        ImportOptions::default(),
    )
    .await;
    let report = report.expect("imports");
    assert_eq!(report.rows, 4, "{report:?}");
    assert_eq!(report.created, 2, "{report:?}");
    let lines: Vec<(u64, Option<&str>)> = report
        .failed
        .iter()
        .map(|f| (f.line, f.column.as_deref()))
        .collect();
    assert_eq!(lines, vec![(4, Some("phone")), (8, Some("phone"))]);
    let batches = store.batches.lock().expect("lock");
    let imported: Vec<u64> = batches.iter().flatten().map(|r| r.line).collect();
    assert_eq!(imported, vec![2, 5]);
    assert_eq!(batches[0][0].fields[0].text(), Some("two\nlines"));
}

#[tokio::test]
async fn batches_progress_and_store_refusals() {
    let mut csv = String::from("phone,city\n");
    for i in 0..5 {
        csv.push_str(&format!("+7916000000{i},Town {i}\n"));
    }
    csv.push_str(&format!("{REFUSED_PHONE},X\n"));
    let opts = ImportOptions {
        batch_size: 2,
        ..ImportOptions::default()
    };
    let (report, store, progress) = run(
        FakeStore {
            defs: defs(),
            ..FakeStore::default()
        },
        &csv,
        opts,
    )
    .await;
    let report = report.expect("imports");
    assert_eq!((report.rows, report.created), (6, 5));
    assert_eq!(
        report.failed,
        vec![RowIssue {
            line: 7,
            column: None,
            reason: "refused by store".into()
        }]
    );
    assert_eq!(store.batches.lock().expect("lock").len(), 3);
    assert_eq!(progress.len(), 3);
    assert_eq!(
        progress.last().map(|p| (p.rows, p.bytes)),
        Some((6, csv.len() as u64))
    );
    assert!(progress.windows(2).all(|w| w[0].rows < w[1].rows));
}

#[tokio::test]
async fn header_and_store_errors_stop_the_import() {
    let (report, store, _) = run(
        FakeStore::default(),
        "phone,shoe_size\n+79160000001,42\n",
        ImportOptions::default(),
    )
    .await;
    assert!(
        matches!(report, Err(ImportError::Header(ref m)) if m.contains("shoe_size")),
        "{report:?}"
    );
    assert!(
        store.batches.lock().expect("lock").is_empty(),
        "nothing imported"
    );
    let (report, _, _) = run(FakeStore::default(), "", ImportOptions::default()).await;
    assert!(matches!(report, Err(ImportError::Header(_))), "{report:?}");
    let broken = FakeStore {
        broken: true,
        ..FakeStore::default()
    };
    let mut csv = String::from("phone\n");
    for i in 0..50 {
        csv.push_str(&format!("+791600{i:05}\n"));
    }
    let opts = ImportOptions {
        batch_size: 3,
        ..ImportOptions::default()
    };
    let (report, _, _) = run(broken, &csv, opts).await;
    assert!(matches!(report, Err(ImportError::Store(_))), "{report:?}");
}

#[tokio::test]
async fn invalid_utf8_fails_only_its_row() {
    let mut bytes = b"phone,first_name\n+79160000001,A\n+79160000002,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    bytes.extend_from_slice(b"+79160000003,C\n");
    let csv = String::from_utf8_lossy(&bytes).to_string();
    // Lossy conversion would hide the bad bytes; feed the raw ones instead.
    let store = Arc::new(FakeStore::default());
    let report = import_csv(
        store.clone(),
        WorkspaceId(1),
        std::io::Cursor::new(bytes),
        ImportOptions::default(),
        Box::new(|_| {}),
    )
    .await
    .expect("imports");
    assert!(csv.contains('\u{fffd}'));
    assert_eq!(report.created, 2, "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].line, 3);
}

#[tokio::test]
async fn semicolon_separated_files_are_recognised() {
    let csv = "\u{feff}phone;first_name;tags\n+79160000001;Ivan;vip,new\n+79160000002;\"A;B\";x\n";
    let (report, store, _) = run(FakeStore::default(), csv, ImportOptions::default()).await;
    let report = report.expect("imports");
    assert_eq!((report.created, report.failed.len()), (2, 0), "{report:?}");
    let batches = store.batches.lock().expect("lock");
    assert_eq!(
        batches[0][0].tags,
        vec!["vip".to_string(), "new".to_string()]
    );
    assert_eq!(batches[0][1].profile.first_name.as_deref(), Some("A;B"));
    assert_eq!(guess_delimiter(b"phone,name;x\n"), b',');
    assert_eq!(guess_delimiter(b"phone"), b',');
}
