//! The OpenAPI document printed by `voronka openapi` validates against the OpenAPI 3.1
//! specification, checked by the reference validator (`openapi-spec-validator`, Python).
//! Without Python and that package the test says so and skips; with `CI=true` it must run.

use std::process::Command;

fn required() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

#[test]
fn openapi_document_validates_with_reference_validator() {
    let probe = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    let available = matches!(&probe, Ok(o) if o.status.success());
    if !available {
        assert!(
            !required(),
            "CI=true requires python3 with openapi-spec-validator (pip install openapi-spec-validator)"
        );
        // Straight to stderr: the harness captures eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: OpenAPI reference validation: python3 with openapi-spec-validator is not installed (pip install openapi-spec-validator)"
        );
        return;
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(env!("CARGO_BIN_EXE_voronka"))
        .arg("openapi")
        .current_dir(dir.path())
        .output()
        .expect("run voronka openapi");
    assert!(
        out.status.success(),
        "voronka openapi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("openapi prints JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "expected an OpenAPI 3.1 document, got {}",
        doc["openapi"]
    );
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &out.stdout).expect("write document");

    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, json\n\
             from openapi_spec_validator import validate\n\
             doc = json.load(open(sys.argv[1]))\n\
             validate(doc)\n\
             print('valid')",
        ])
        .arg(&path)
        .output()
        .expect("run validator");
    assert!(
        check.status.success(),
        "the OpenAPI document does not validate:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
