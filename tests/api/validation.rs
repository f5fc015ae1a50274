//! `herald validate` and start-up checks: precise file:line errors, and no start on a bad project.

use std::path::Path;
use std::process::Command;

use crate::helpers::{copy_examples, write};

fn validate(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--dir", dir.to_str().expect("utf-8 path"), "validate"])
        .env_remove("HERALD_DATABASE__URL")
        .output()
        .expect("run herald validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn project_with(file: &str, content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    write(dir.path(), file, content);
    dir
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let (ok, out) = validate(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("ok:"), "{out}");
}

#[test]
fn unknown_field_is_reported_with_file_line_and_column() {
    let dir = project_with(
        "workflows/bad.yaml",
        "name: bad\ntrigger:\n  event: signed_up\nsteps:\n  - send: welcome\n    delay: 1h\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("workflows/bad.yaml:6:5"), "{out}");
    assert!(out.contains("delay"), "{out}");
}

#[test]
fn bad_duration_is_reported() {
    let dir = project_with(
        "workflows/bad.yaml",
        "trigger:\n  event: signed_up\nsteps:\n  - wait: 1 hour\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("workflows/bad.yaml:4:"), "{out}");
    assert!(out.contains("1 hour"), "{out}");
}

#[test]
fn missing_template_is_reported() {
    let dir = project_with(
        "workflows/bad.yaml",
        "trigger:\n  event: signed_up\nsteps:\n  - send: no-such-template\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("workflows/bad.yaml:4:"), "{out}");
    assert!(out.contains("no-such-template"), "{out}");
}

#[test]
fn unknown_step_id_in_clicked_is_reported() {
    let dir = project_with(
        "workflows/bad.yaml",
        "trigger:\n  event: signed_up\nsteps:\n  - id: hello\n    send: welcome\n  - branch:\n      if: { clicked: helo }\n      then: [ exit ]\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("workflows/bad.yaml:7:"), "{out}");
    assert!(out.contains("helo"), "{out}");
}

#[test]
fn strict_template_error_shows_in_validate() {
    let dir = project_with(
        "templates/typo.hbs",
        "---\nsubject: Hi\n---\n<p>Hello {{contact.frist_name}}</p>\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("templates/typo.hbs:4"), "{out}");
    assert!(out.contains("frist_name"), "{out}");
}

#[test]
fn serve_refuses_to_start_on_an_invalid_project() {
    let dir = project_with(
        "workflows/bad.yaml",
        "trigger:\n  event: signed_up\nsteps:\n  - wait: soon\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--dir", dir.path().to_str().expect("utf-8"), "serve"])
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run herald serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workflows/bad.yaml:4:"), "{err}");
}

#[test]
fn config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    write(
        dir.path(),
        "herald.toml",
        "[sending]\ntransport = \"nowhere\"\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(
        out.contains("herald.toml") && out.contains("sending.transport"),
        "{out}"
    );
}

#[test]
fn a_pkcs8_dkim_key_fails_validation_with_the_conversion_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim/rsa-pkcs8.pem"),
    )
    .expect("fixture");
    write(dir.path(), "dkim.pem", &key);
    write(
        dir.path(),
        "herald.toml",
        "[dkim]\ndomain = \"shop.example\"\nselector = \"herald\"\nprivate_key_file = \"dkim.pem\"\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(
        out.contains("dkim.pem") && out.contains("openssl rsa -in KEY -out KEY.rsa -traditional"),
        "{out}"
    );
}

#[test]
fn unknown_segments_and_segment_cycles_are_reported_with_their_place() {
    let dir = project_with(
        "segments/loyal.yaml",
        "name: loyal\nmatch:\n  - segment: fans\n",
    );
    write(
        dir.path(),
        "segments/fans.yaml",
        "name: fans\nmatch:\n  - attribute: country\n    eq: US\n  - segment: loyal\n",
    );
    write(
        dir.path(),
        "workflows/nudge.yaml",
        "trigger: { segment: { entered: no-such-segment } }\nsteps:\n  - send: win-back\n",
    );
    write(
        dir.path(),
        "segments/bad.yaml",
        "match:\n  - property: total\n    gt: 1\n",
    );
    let (ok, out) = validate(dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("segments/loyal.yaml:3:14: segment cycle: fans → loyal → fans")
            || out.contains("segments/loyal.yaml:3:14: segment cycle: loyal → fans → loyal"),
        "{out}"
    );
    assert!(
        out.contains("segments/fans.yaml:5:14: segment cycle"),
        "{out}"
    );
    assert!(
        out.contains(
            "workflows/nudge.yaml:1:32: unknown segment `no-such-segment`: no file in segments/ defines it"
        ),
        "{out}"
    );
    assert!(
        out.contains("segments/bad.yaml:2:5: `property` is not allowed in a segment"),
        "{out}"
    );
}
