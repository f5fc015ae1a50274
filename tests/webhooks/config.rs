//! `[webhooks.*]` in `herald.toml` (FORMATS.md) and their environment overrides.

use herald::config::Settings;
use herald::webhook::{Provider, Verifier};

use crate::support::{SendgridKey, TEST_TOPIC, fixtures_dir};

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::load_with_env(dir.path(), None, &env).map_err(|e| e.to_string())
}

#[test]
fn every_section_of_the_documented_format_loads() {
    let toml = format!(
        r#"
[webhooks.sendgrid]
public_key = "{}"
[webhooks.postmark]
username = "hooks"
password = "secret"
[webhooks.mailgun]
signing_key = "key-abc"
[webhooks.ses]
topic_arns = ["{TEST_TOPIC}"]
certificates = ["ses/test_signing_cert.pem"]
[webhooks.resend]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#,
        SendgridKey::new().public_key()
    );
    let settings = load(&toml, &[]).unwrap();
    let webhooks = &settings.webhooks;
    assert_eq!(webhooks.mailgun.as_ref().unwrap().tolerance, "5m");
    assert_eq!(webhooks.ses.as_ref().unwrap().topic_arns, [TEST_TOPIC]);
    let verifier = Verifier::new(webhooks, &fixtures_dir()).unwrap();
    for provider in Provider::ALL {
        assert!(verifier.is_configured(provider), "{provider}");
    }
}

#[test]
fn no_section_means_no_endpoints() {
    let settings = load("", &[]).unwrap();
    let verifier = Verifier::new(&settings.webhooks, &fixtures_dir()).unwrap();
    for provider in Provider::ALL {
        assert!(!verifier.is_configured(provider), "{provider}");
    }
    assert!(format!("{verifier:?}").contains("configured: []"));
}

#[test]
fn environment_overrides_reach_webhook_settings() {
    let settings = load(
        "",
        &[
            (
                "HERALD_WEBHOOKS__RESEND__SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            (
                "HERALD_WEBHOOKS__SES__TOPIC_ARNS",
                "arn:aws:sns:us-east-1:1:a,arn:aws:sns:us-east-1:1:b",
            ),
            ("HERALD_WEBHOOKS__MAILGUN__SIGNING_KEY", "key-abc"),
            ("HERALD_WEBHOOKS__MAILGUN__TOLERANCE", "2m"),
        ],
    )
    .unwrap();
    let webhooks = &settings.webhooks;
    assert!(webhooks.resend.is_some());
    assert_eq!(
        webhooks.ses.as_ref().unwrap().topic_arns,
        ["arn:aws:sns:us-east-1:1:a", "arn:aws:sns:us-east-1:1:b"]
    );
    assert_eq!(webhooks.mailgun.as_ref().unwrap().tolerance, "2m");
}

#[test]
fn unusable_settings_fail_at_load_naming_the_key() {
    for (toml, key) in [
        (
            "[webhooks.ses]\ntopic_arns = []\n",
            "webhooks.ses.topic_arns",
        ),
        (
            "[webhooks.resend]\nsecret = \"whsec_!!\"\n",
            "webhooks.resend.secret",
        ),
        (
            "[webhooks.sendgrid]\npublic_key = \"MFkw\"\n",
            "webhooks.sendgrid.public_key",
        ),
        (
            "[webhooks.mailgun]\nsigning_key = \"k\"\ntolerance = \"five\"\n",
            "webhooks.mailgun.tolerance",
        ),
        ("[webhooks.postmark]\nusername = \"u\"\n", "password"),
        ("[webhooks.sparkpost]\nsecret = \"s\"\n", "sparkpost"),
    ] {
        let error = load(toml, &[]).unwrap_err();
        assert!(error.contains(key), "{toml}: {error}");
    }
}
