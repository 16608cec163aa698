//! Runs the built `voronka` binary in a temporary directory: administration commands,
//! CSV import and export, help texts, configuration errors, and serve with graceful stop.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Run {
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "expected success, got {:?}\nstdout: {}\nstderr: {}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
    fn fails(self) -> Self {
        assert!(
            !self.out.status.success(),
            "expected failure\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voronka"));
    c.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("VORONKA_") {
            c.env_remove(k);
        }
    }
    c
}

fn voronka(dir: &Path, args: &[&str]) -> Run {
    voronka_with(dir, args, &[], None)
}

fn voronka_with(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut c = command(dir, args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start voronka");
    if let Some(text) = stdin {
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    Run {
        out: child.wait_with_output().expect("voronka runs"),
    }
}

const CONTACTS: &str = "Phone,First_Name,tags,channel_id,external_id,subscribed\n\
+79160000001,Ivan,vip;new,,,\n\
12345,Bad,,,,\n\
+79160000003,\"Anna\",x,,,\n";

#[test]
fn administration_import_export_and_help() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();

    let r = voronka(dir, &["migrate"]).ok();
    assert!(r.stdout().contains("applied"), "{}", r.stdout());
    assert!(dir.join("voronka-data/voronka.db").exists());
    assert!(voronka(dir, &["migrate"])
        .ok()
        .stdout()
        .contains("applied 0"));

    let ws = voronka(dir, &["workspace", "create", "Shop"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    assert!(ws.parse::<i64>().is_ok(), "workspace id: {ws}");
    assert!(voronka(dir, &["workspace", "list"])
        .ok()
        .stdout()
        .contains("\tShop\t"));

    let user = voronka_with(
        dir,
        &[
            "user",
            "create",
            "--workspace",
            &ws,
            "--email",
            "owner@example.com",
            "--name",
            "Owner",
            "--password-stdin",
        ],
        &[],
        Some("correct horse battery\n"),
    )
    .ok();
    assert!(
        user.stdout().trim().parse::<i64>().is_ok(),
        "{}",
        user.stdout()
    );
    let short = voronka_with(
        dir,
        &[
            "user",
            "create",
            "--workspace",
            &ws,
            "--email",
            "b@example.com",
            "--name",
            "B",
            "--role",
            "analyst",
        ],
        &[("VORONKA_PASSWORD", "short")],
        None,
    )
    .fails();
    assert!(short.stderr().contains("password"), "{}", short.stderr());

    let key = voronka(
        dir,
        &[
            "apikey",
            "create",
            "--workspace",
            &ws,
            "--name",
            "CI",
            "--scope",
            "contacts:read",
        ],
    )
    .ok();
    let token = key.stdout().trim().to_string();
    assert!(token.starts_with("vk_"), "{token}");
    assert!(key.stderr().contains("only once"), "{}", key.stderr());
    let list = voronka(dir, &["apikey", "list", "--workspace", &ws])
        .ok()
        .stdout();
    assert!(
        list.contains(&token[3..15]) && list.contains("contacts:read"),
        "{list}"
    );
    let key_id = list.split('\t').next().expect("id").to_string();
    assert!(
        voronka(dir, &["apikey", "revoke", "--workspace", &ws, &key_id])
            .ok()
            .stdout()
            .contains("revoked")
    );
    let bad_scope = voronka(
        dir,
        &[
            "apikey",
            "create",
            "--workspace",
            &ws,
            "--name",
            "x",
            "--scope",
            "root",
        ],
    )
    .fails();
    assert!(
        bad_scope.stderr().contains("unknown scope"),
        "{}",
        bad_scope.stderr()
    );

    // A bad row is reported by line and column; the good rows import; exit 0.
    std::fs::write(dir.join("contacts.csv"), CONTACTS).expect("write csv");
    let first = voronka(
        dir,
        &["contacts", "import", "contacts.csv", "--workspace", &ws],
    )
    .ok()
    .stdout();
    assert!(
        first.contains("created: 2, updated: 0, unchanged: 0, failed: 1"),
        "{first}"
    );
    assert!(first.contains("failed: line 3 (Phone)"), "{first}");
    let again = voronka(
        dir,
        &["contacts", "import", "contacts.csv", "--workspace", &ws],
    )
    .ok()
    .stdout();
    assert!(
        again.contains("created: 0, updated: 0, unchanged: 2, failed: 1"),
        "{again}"
    );

    // Every row failing, or a bad header, is an error.
    std::fs::write(dir.join("bad.csv"), "phone\n123\nabc\n").expect("write csv");
    let all_bad = voronka(dir, &["contacts", "import", "bad.csv", "--workspace", &ws]).fails();
    assert!(
        all_bad.stdout().contains("failed: line 2"),
        "{}",
        all_bad.stdout()
    );
    assert!(
        all_bad.stderr().contains("every row failed"),
        "{}",
        all_bad.stderr()
    );
    std::fs::write(dir.join("header.csv"), "phone,shoe_size\n+79160000009,42\n")
        .expect("write csv");
    let header = voronka(
        dir,
        &["contacts", "import", "header.csv", "--workspace", &ws],
    )
    .fails();
    assert!(
        header.stderr().contains("unknown column `shoe_size`"),
        "{}",
        header.stderr()
    );
    let mapped = voronka(
        dir,
        &[
            "contacts",
            "import",
            "header.csv",
            "--workspace",
            &ws,
            "--map",
            "shoe_size=ignore",
            "--source",
            "crm",
        ],
    )
    .ok();
    assert!(
        mapped.stdout().contains("created: 1"),
        "{}",
        mapped.stdout()
    );

    // Export to a file and to stdout; the export imports back unchanged.
    voronka(
        dir,
        &[
            "contacts",
            "export",
            "--workspace",
            &ws,
            "--output",
            "out.csv",
        ],
    )
    .ok();
    let exported = std::fs::read_to_string(dir.join("out.csv")).expect("export file");
    assert!(
        exported.starts_with("id,first_name,last_name,"),
        "{exported}"
    );
    assert_eq!(exported.lines().count(), 4, "{exported}");
    assert!(
        exported.contains("'+79160000001"),
        "phones are escaped: {exported}"
    );
    let vip = voronka(
        dir,
        &["contacts", "export", "--workspace", &ws, "--tag", "vip"],
    )
    .ok();
    assert_eq!(vip.stdout().lines().count(), 2, "{}", vip.stdout());
    assert!(vip.stdout().contains("Ivan") && vip.stderr().contains("exported 1"));
    let back = voronka(dir, &["contacts", "import", "out.csv", "--workspace", &ws])
        .ok()
        .stdout();
    assert!(
        back.contains("created: 0, updated: 0, unchanged: 3, failed: 0"),
        "{back}"
    );

    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["workspace", "--help"],
        vec!["workspace", "create", "--help"],
        vec!["workspace", "list", "--help"],
        vec!["user", "create", "--help"],
        vec!["apikey", "create", "--help"],
        vec!["apikey", "list", "--help"],
        vec!["apikey", "revoke", "--help"],
        vec!["contacts", "import", "--help"],
        vec!["contacts", "export", "--help"],
        vec!["openapi", "--help"],
        vec!["bench", "import", "--help"],
    ] {
        let r = voronka(dir, &args).ok();
        assert!(r.stdout().contains("Usage:"), "{args:?}: {}", r.stdout());
    }
    let help = voronka(dir, &["contacts", "import", "--help"])
        .ok()
        .stdout();
    assert!(help.contains("Exit status"), "{help}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let r = voronka_with(dir, &["migrate"], &[("VORONKA_LISTEN", "nowhere")], None).fails();
    assert!(
        r.stderr().contains("`listen`") && r.stderr().contains("VORONKA_LISTEN"),
        "{}",
        r.stderr()
    );
    std::fs::write(
        dir.join("voronka.toml"),
        "listen = \"127.0.0.1:1\"\ndatabse_url = \"x\"\n",
    )
    .expect("write");
    let r = voronka(dir, &["migrate"]).fails();
    assert!(r.stderr().contains("databse_url"), "{}", r.stderr());
    let r = voronka(dir, &["--config", "missing.toml", "migrate"]).fails();
    assert!(r.stderr().contains("missing.toml"), "{}", r.stderr());
    let r = voronka(dir, &["workspace", "frobnicate"]).fails();
    assert_eq!(r.out.status.code(), Some(2), "usage errors exit 2");
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

#[test]
fn serve_creates_the_key_file_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = command(dir, &["serve"])
        .env("VORONKA_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some(answer) = http_get(port, "/readyz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "server did not answer in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let key = dir.join("voronka-data/secret.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(exit.success(), "exit {exit:?}: {log}");
    assert!(
        log.contains(&format!("http://127.0.0.1:{port}")),
        "the URL is logged: {log}"
    );
}
