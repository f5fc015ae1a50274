//! Tests of loading and rendering whole template directories.

use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

/// A temporary templates directory built from `(relative path, contents)` pairs.
fn dir_with(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, contents) in files {
        let path = dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
    dir
}

fn load(files: &[(&str, &str)]) -> (TempDir, TemplateRegistry) {
    let dir = dir_with(files);
    let registry = TemplateRegistry::load(dir.path()).unwrap_or_else(|errors| {
        panic!(
            "load failed: {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    (dir, registry)
}

fn load_errors(files: &[(&str, &str)]) -> (TempDir, Vec<TemplateError>) {
    let dir = dir_with(files);
    let errors = TemplateRegistry::load(dir.path()).unwrap_err();
    (dir, errors)
}

fn only_error(files: &[(&str, &str)]) -> (TempDir, TemplateError) {
    let (dir, mut errors) = load_errors(files);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let err = errors.remove(0);
    (dir, err)
}

fn ctx() -> Value {
    json!({
        "contact": {"id": "c1", "email": "tom@example.com", "first_name": "Tom & Jerry"},
        "event": {"name": "cart", "properties": {}, "timestamp": "2026-02-03T10:00:00Z"},
        "workflow": {"name": "cart"},
        "unsubscribe_url": "https://shop.example/u/abc?x=1&y=2",
    })
}

fn strict(registry: &TemplateRegistry, name: &str, ctx: &Value) -> Result<Rendered, TemplateError> {
    registry.render(name, ctx, None, Mode::Strict)
}

const LAYOUT: &str = "<!doctype html>\n<html><head><title>{{subject}}</title></head>\n\
                      <body><main>{{{body}}}</main>{{> footer}}</body></html>\n";
const FOOTER: &str = "<p class=\"footer\"><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>";

#[test]
fn registry_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TemplateRegistry>();
    assert_send_sync::<TemplateError>();
}

#[test]
fn missing_directory_is_an_empty_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TemplateRegistry::load(&dir.path().join("nope")).unwrap();
    assert!(registry.names().is_empty());
    assert!(!registry.contains("welcome"));
    assert!(registry.check_all().is_empty());
    let err = strict(&registry, "welcome", &ctx()).unwrap_err();
    assert!(err.message.contains("no template named `welcome`"), "{err}");
}

#[test]
fn a_file_is_not_a_templates_directory() {
    let dir = dir_with(&[("file", "x")]);
    let errors = TemplateRegistry::load(&dir.path().join("file")).unwrap_err();
    assert!(errors[0].message.contains("not a directory"), "{errors:?}");
}

#[test]
fn names_are_sorted_and_include_subdirectories() {
    let (_dir, registry) = load(&[
        ("welcome-tips.hbs", "---\nsubject: a\n---\nx"),
        ("cart_reminder.hbs", "---\nsubject: b\n---\ny"),
        ("emails/x.hbs", "---\nsubject: c\n---\nz"),
        ("emails/x.txt.hbs", "text z"),
        ("README.md", "not a template"),
        (".hidden.hbs", "ignored"),
        ("partials/footer.hbs", FOOTER),
        ("layouts/base.hbs", LAYOUT),
    ]);
    assert_eq!(
        registry.names(),
        ["cart_reminder", "emails/x", "welcome-tips"]
    );
    assert!(registry.contains("emails/x"));
    assert!(!registry.contains("footer") && !registry.contains("base"));
    let rendered = strict(&registry, "emails/x", &ctx()).unwrap();
    assert_eq!(
        (rendered.html.as_str(), rendered.text.as_str()),
        ("z", "text z")
    );
}

#[test]
fn front_matter_fields() {
    let (_dir, registry) = load(&[(
        "cart.hbs",
        "---\nsubject: \"  {{contact.first_name}},\n  you left something behind  \"\n\
         preheader: Your cart is waiting, {{contact.first_name}}\n\
         from: \"Acme Shop <hello@shop.example>\"\n---\n<h1>Hi</h1>",
    )]);
    let r = strict(&registry, "cart", &ctx()).unwrap();
    assert_eq!(r.subject, "Tom & Jerry, you left something behind");
    assert_eq!(
        r.preheader.as_deref(),
        Some("Your cart is waiting, Tom & Jerry")
    );
    assert_eq!(r.from.as_deref(), Some("Acme Shop <hello@shop.example>"));
    assert!(!r.missing_variables);
    // No <body>: the preheader div goes first, escaped.
    assert!(
        r.html.starts_with("<div style=\"display:none;"),
        "{}",
        r.html
    );
    assert!(
        r.html
            .contains(">Your cart is waiting, Tom &amp; Jerry</div><h1>Hi</h1>")
    );
}

#[test]
fn unknown_front_matter_key_is_reported_with_its_line() {
    let (dir, err) = only_error(&[("cart.hbs", "---\nsubject: x\nlayot: base\n---\nbody")]);
    assert_eq!(err.file, dir.path().join("cart.hbs"));
    assert_eq!((err.line, err.column), (Some(3), Some(1)));
    assert!(err.message.contains("unknown field `layot`"), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3:1: ", err.file.display()))
    );
}

#[test]
fn bad_yaml_is_reported_with_its_line() {
    let (_dir, err) = only_error(&[("cart.hbs", "---\nsubject: x\nsample: {a: [1, 2}\n---\n")]);
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.column.is_some(), "{err}");
}

#[test]
fn subject_and_front_matter_are_required() {
    let (_dir, err) = only_error(&[("a.hbs", "---\npreheader: hi\n---\nbody")]);
    assert!(err.message.contains("`subject` is required"), "{err}");
    assert_eq!(err.line, Some(1));

    let (_dir, err) = only_error(&[("a.hbs", "<p>no header</p>")]);
    assert!(err.message.contains("missing front matter"), "{err}");

    let (_dir, err) = only_error(&[("a.hbs", "---\nsubject: x\n<p>never closed</p>")]);
    assert!(err.message.contains("not closed"), "{err}");
}

#[test]
fn unknown_layout_is_an_error_at_its_line() {
    let (_dir, err) = only_error(&[("a.hbs", "---\nsubject: x\nlayout: nope\n---\nbody")]);
    assert_eq!((err.line, err.column), (Some(3), Some(9)));
    assert!(
        err.message.contains("layout `nope` does not exist"),
        "{err}"
    );
}

#[test]
fn handlebars_syntax_errors_are_file_relative() {
    let (dir, err) = only_error(&[("a.hbs", "---\nsubject: x\n---\n<p>\n{{#if x}}oops</p>\n")]);
    assert_eq!(err.file, dir.path().join("a.hbs"));
    assert_eq!(err.line, Some(6), "{err}");

    let (_dir, err) = only_error(&[("a.hbs", "---\nsubject: x\n---\n<p>{{#each x}}{{/if}}</p>\n")]);
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.message.contains("was opened"), "{err}");

    // In the subject: line of the key, column inside the quoted value.
    let (_dir, err) = only_error(&[("a.hbs", "---\n\nsubject: \"Hi {{foo bar=}}\"\n---\n")]);
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.column.is_some_and(|c| c > 10), "{err}");

    let (dir, err) = only_error(&[("partials/p.hbs", "ok\n{{/if}}")]);
    assert_eq!(err.file, dir.path().join("partials/p.hbs"));
    assert_eq!(err.line, Some(2));
}

#[test]
fn every_load_error_is_reported() {
    let (_dir, errors) = load_errors(&[
        ("a.hbs", "---\nsubject: x\nbad: 1\n---\n"),
        ("b.hbs", "---\nsubject: x\n---\n{{#if}}"),
        ("bad name.hbs", "---\nsubject: x\n---\n"),
        ("orphan.txt.hbs", "text"),
        ("c.txt.hbs", "---\nsubject: no\n---\ntext"),
        ("c.hbs", "---\nsubject: x\n---\n"),
    ]);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("unknown field `bad`"), "{text}");
    assert!(text.contains("not a valid template name"), "{text}");
    assert!(text.contains("without an HTML template"), "{text}");
    assert!(text.contains("`subject` belongs in c.hbs"), "{text}");
}

#[test]
fn layouts_and_partials() {
    let (_dir, registry) = load(&[
        ("layouts/base.hbs", LAYOUT),
        ("partials/footer.hbs", FOOTER),
        ("partials/sign-off.hbs", "— {{workflow.name}} team"),
        (
            "a.hbs",
            "---\nsubject: Hello {{contact.first_name}}\npreheader: pre\nlayout: base\n---\n\
             <p>Hi</p>{{> sign-off}}",
        ),
        ("a.txt.hbs", "Hi\n{{> sign-off}}\n"),
        (
            "footer.hbs",
            "---\nsubject: a template named like a partial\n---\nT",
        ),
    ]);
    let r = strict(&registry, "a", &ctx()).unwrap();
    assert!(r.html.starts_with("<!doctype html>"), "{}", r.html);
    assert!(
        r.html.contains("<title>Hello Tom &amp; Jerry</title>"),
        "{}",
        r.html
    );
    assert!(
        r.html.contains("<main><p>Hi</p>— cart team</main>"),
        "{}",
        r.html
    );
    assert!(
        r.html.contains(
            "<a href=\"https://shop.example/u/abc?x&#x3D;1&amp;y&#x3D;2\">Unsubscribe</a>"
        ),
        "{}",
        r.html
    );
    // Preheader right after <body>.
    assert!(
        r.html.contains("<body><div style=\"display:none;"),
        "{}",
        r.html
    );
    assert!(r.html.contains(">pre</div><main>"), "{}", r.html);
    // Partials work in the text registry too (a standalone partial line keeps the
    // partial's own line ending, which here is none).
    assert_eq!(r.text, "Hi\n— cart team");
    // The template named `footer` did not replace the partial.
    assert!(!r.html.contains("<main><p>Hi</p>— cart team</main>T"));
}

#[test]
fn layout_sees_preheader_and_context() {
    let (_dir, registry) = load(&[
        (
            "layouts/l.hbs",
            "[{{preheader}}|{{workflow.name}}|{{{body}}}]",
        ),
        ("a.hbs", "---\nsubject: s\nlayout: l\n---\nB"),
        ("b.hbs", "---\nsubject: s\npreheader: P\nlayout: l\n---\nB"),
    ]);
    assert_eq!(strict(&registry, "a", &ctx()).unwrap().html, "[|cart|B]");
    let b = strict(&registry, "b", &ctx()).unwrap().html;
    assert!(b.ends_with(">P</div>[P|cart|B]"), "{b}");
}

#[test]
fn html_is_escaped_but_subject_and_text_are_not() {
    let (_dir, registry) = load(&[
        (
            "a.hbs",
            "---\nsubject: \"Hi {{contact.first_name}}\"\n---\n<p>{{contact.first_name}}</p>",
        ),
        ("a.txt.hbs", "Hi {{contact.first_name}} <3"),
    ]);
    let r = strict(&registry, "a", &ctx()).unwrap();
    assert_eq!(r.subject, "Hi Tom & Jerry");
    assert_eq!(r.html, "<p>Tom &amp; Jerry</p>");
    assert_eq!(r.text, "Hi Tom & Jerry <3");
}

#[test]
fn text_falls_back_to_html2text_of_the_layout_document() {
    let (_dir, registry) = load(&[
        ("layouts/base.hbs", LAYOUT),
        ("partials/footer.hbs", FOOTER),
        (
            "a.hbs",
            "---\nsubject: s\npreheader: hidden preview\nlayout: base\n---\n\
             <table><tr><td><h1>Hi {{contact.first_name}}</h1>\
             <p><a href=\"https://shop.example/cart\">Return to cart</a></p></td></tr></table>",
        ),
    ]);
    let r = strict(&registry, "a", &ctx()).unwrap();
    assert!(r.text.contains("Hi Tom & Jerry"), "{}", r.text);
    assert!(r.text.contains("Return to cart"), "{}", r.text);
    assert!(r.text.contains("https://shop.example/cart"), "{}", r.text);
    assert!(r.text.contains("Unsubscribe"), "{}", r.text);
    assert!(!r.text.contains("hidden preview"), "{}", r.text);
    assert!(!r.text.contains('─'), "{}", r.text);
    assert!(
        r.text.lines().all(|l| l.chars().count() <= 78),
        "{}",
        r.text
    );
}

#[test]
fn strict_missing_variable_names_file_line_and_column() {
    let (dir, registry) = load(&[
        (
            "a.hbs",
            "---\nsubject: s\n---\n<p>Hi</p>\n<p>{{contact.frist_name}}</p>\n",
        ),
        ("b.hbs", "---\nsubject: s\nlayout: l\n---\nok"),
        ("layouts/l.hbs", "<html>\n{{{body}}}\n{{> p}}"),
        ("partials/p.hbs", "\n\n  {{contact.nope}}"),
        (
            "c.hbs",
            "---\nsubject: \"Hi {{contact.frist_name}}\"\n---\nok",
        ),
        (
            "d.hbs",
            "---\nsubject: s\n---\n{{#each event.properties.items}}{{name}}{{/each}}",
        ),
    ]);
    let err = strict(&registry, "a", &ctx()).unwrap_err();
    assert_eq!(err.file, dir.path().join("a.hbs"));
    assert_eq!((err.line, err.column), (Some(5), Some(4)));
    assert!(err.message.contains("`contact.frist_name`"), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:5:4: {}",
            dir.path().join("a.hbs").display(),
            err.message
        )
    );

    // Errors inside a partial point at the partial.
    let err = strict(&registry, "b", &ctx()).unwrap_err();
    assert_eq!(err.file, dir.path().join("partials/p.hbs"));
    assert_eq!((err.line, err.column), (Some(3), Some(3)));

    // In the subject: the front-matter line, the column inside the quoted string.
    let err = strict(&registry, "c", &ctx()).unwrap_err();
    assert_eq!(err.file, dir.path().join("c.hbs"));
    assert_eq!((err.line, err.column), (Some(2), Some(14)));

    let err = strict(&registry, "d", &ctx()).unwrap_err();
    assert!(err.message.contains("event.properties.items"), "{err}");
    assert_eq!(err.line, Some(4));
}

#[test]
fn lenient_renders_missing_as_empty_and_flags_it() {
    let (_dir, registry) = load(&[
        (
            "a.hbs",
            "---\nsubject: \"Hi {{contact.nickname}}!\"\n---\n\
             <p>[{{contact.frist_name}}]{{#if (eq contact.tier \"gold\")}}gold{{/if}}</p>",
        ),
        (
            "b.hbs",
            "---\nsubject: s\n---\n{{format_money 12.5 \"USD\"}}",
        ),
        ("c.hbs", "---\nsubject: s\n---\n{{contact.first_name}}"),
    ]);
    let r = registry.render("a", &ctx(), None, Mode::Lenient).unwrap();
    assert!(r.missing_variables);
    assert_eq!(r.subject, "Hi !");
    assert_eq!(r.html, "<p>[]</p>");

    // Helper errors are not about missing variables: still an error.
    let err = registry
        .render("b", &ctx(), None, Mode::Lenient)
        .unwrap_err();
    assert!(err.message.contains("format_money"), "{err}");

    // Nothing missing: not flagged.
    let r = registry.render("c", &ctx(), None, Mode::Lenient).unwrap();
    assert!(!r.missing_variables);
    assert_eq!(r.html, "Tom &amp; Jerry");
}

#[test]
fn default_helper_covers_missing_values_in_strict_mode() {
    let (_dir, registry) = load(&[(
        "a.hbs",
        "---\nsubject: 'Welcome, {{default contact.first_name \"friend\"}}!'\n---\n\
         <p>Hi {{default contact.first_name \"there\"}}, code {{default contact.discount_code \"COMEBACK10\"}}</p>",
    )]);
    let r = strict(&registry, "a", &json!({"contact": {}})).unwrap();
    assert_eq!(r.subject, "Welcome, friend!");
    assert_eq!(r.html, "<p>Hi there, code COMEBACK10</p>");
    assert!(!r.missing_variables);
    let r = strict(&registry, "a", &ctx()).unwrap();
    assert_eq!(r.subject, "Welcome, Tom & Jerry!");
}

#[test]
fn every_helper_is_available_in_both_registries() {
    let body = r#"{{format_date event.timestamp}}|{{format_date event.timestamp "%H:%M" "Europe/Lisbon"}}|{{format_money 1234 "USD"}}|{{format_money 12.5 "EUR" major=true}}|{{upper "a"}}{{lower "B"}}{{capitalize "cc"}}|{{truncate "abcdef" 3}}|{{json event.properties}}|{{#if (and (eq 1 1) (ne 1 2) (gt 2 1) (gte 2 2) (lt 1 2) (lte 2 2) (or false true) (not false))}}ops{{/if}}|{{len contact.email}}"#;
    let (_dir, registry) = load(&[
        ("a.hbs", &format!("---\nsubject: s\n---\n{body}")),
        ("a.txt.hbs", body),
    ]);
    let r = strict(&registry, "a", &ctx()).unwrap();
    let expected = "February 3, 2026|10:00|$12.34|€12.50|AbCc|abc…|{}|ops|15";
    assert_eq!(r.text, expected);
    assert_eq!(r.html, expected);
}

#[test]
fn subject_override_is_rendered_unescaped() {
    let (dir, registry) = load(&[("a.hbs", "---\nsubject: original\n---\nbody")]);
    let r = registry
        .render(
            "a",
            &ctx(),
            Some("{{contact.first_name}}, a\nspecial offer"),
            Mode::Strict,
        )
        .unwrap();
    assert_eq!(r.subject, "Tom & Jerry, a special offer");

    let err = registry
        .render("a", &ctx(), Some("Hi {{contact.frist_name}}"), Mode::Strict)
        .unwrap_err();
    assert_eq!(err.file, dir.path().join("a.hbs"));
    assert!(
        err.message
            .starts_with("subject override (line 1, column 4)"),
        "{err}"
    );

    let err = registry
        .render("a", &ctx(), Some("{{#if}}"), Mode::Strict)
        .unwrap_err();
    assert!(err.message.starts_with("subject override"), "{err}");

    let r = registry
        .render(
            "a",
            &ctx(),
            Some("Hi {{contact.frist_name}}"),
            Mode::Lenient,
        )
        .unwrap();
    assert_eq!(r.subject, "Hi");
    assert!(r.missing_variables);
}

#[test]
fn sample_context_merges_front_matter_samples() {
    let (_dir, registry) = load(&[
        (
            "cart.hbs",
            "---\nsubject: s\nsample:\n  contact: { first_name: Bea }\n  event:\n    properties:\n      \
             items: [ {name: Mug, price: 1200} ]\n---\n\
             {{#each event.properties.items}}{{name}} {{format_money price \"EUR\"}}{{/each}} \
             {{event.properties.note}}",
        ),
        (
            "cart.txt.hbs",
            "---\nsample: { event: { properties: { note: txt } } }\n---\nt",
        ),
    ]);
    let base = registry.sample_context("unknown");
    assert_eq!(base["contact"]["email"], "ana@example.com");
    assert_eq!(base["contact"]["timezone"], "Europe/Lisbon");
    assert_eq!(base["unsubscribe_url"], "http://127.0.0.1:8080/u/sample");
    assert_eq!(base["event"]["properties"], json!({}));
    assert!(
        chrono::DateTime::parse_from_rfc3339(base["event"]["timestamp"].as_str().unwrap()).is_ok()
    );

    let sample = registry.sample_context("cart");
    assert_eq!(sample["contact"]["first_name"], "Bea");
    assert_eq!(sample["contact"]["last_name"], "Silva");
    assert_eq!(sample["event"]["properties"]["items"][0]["price"], 1200);
    assert_eq!(sample["event"]["properties"]["note"], "txt");

    assert!(registry.check_all().is_empty());
    let r = strict(&registry, "cart", &sample).unwrap();
    assert_eq!(r.html, "Mug €12.00 txt");
}

#[test]
fn check_all_reports_every_failure() {
    let (dir, registry) = load(&[
        ("a.hbs", "---\nsubject: s\n---\n{{event.properties.items}}"),
        ("b.hbs", "---\nsubject: s\n---\n{{contact.first_name}}"),
        (
            "c.hbs",
            "---\nsubject: s\n---\n{{format_date contact.city}}",
        ),
    ]);
    let errors = registry.check_all();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].file, dir.path().join("a.hbs"));
    assert_eq!(errors[1].file, dir.path().join("c.hbs"));
}

#[test]
fn bad_context_is_an_error_not_a_panic() {
    let (_dir, registry) = load(&[("a.hbs", "---\nsubject: s\n---\nbody")]);
    for bad in [json!(null), json!([1]), json!("x")] {
        let err = registry.render("a", &bad, None, Mode::Lenient).unwrap_err();
        assert!(err.message.contains("JSON object"), "{err}");
    }
}

#[test]
fn shipped_templates_pass_check_all() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"));
    let registry = TemplateRegistry::load(dir).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    for name in [
        "welcome",
        "welcome-tips",
        "cart-reminder",
        "cart-discount",
        "cart-last-chance",
    ] {
        assert!(registry.contains(name), "missing template {name}");
    }
    let errors = registry.check_all();
    assert!(
        errors.is_empty(),
        "{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );

    for name in registry.names() {
        let r = strict(&registry, &name, &registry.sample_context(&name)).unwrap();
        assert!(!r.subject.is_empty(), "{name}");
        assert!(r.preheader.is_some(), "{name} has no preheader");
        assert!(r.html.contains("Acme Shop"), "{name}");
        assert!(
            r.html.contains("href=\"http://127.0.0.1:8080/u/sample\""),
            "{name}"
        );
        assert!(
            r.text.contains("http://127.0.0.1:8080/u/sample"),
            "{name}: {}",
            r.text
        );
        assert!(!r.text.contains('<'), "{name}: {}", r.text);
    }

    let cart = strict(
        &registry,
        "cart-reminder",
        &registry.sample_context("cart-reminder"),
    )
    .unwrap();
    assert!(
        cart.html.contains("$12.00") && cart.text.contains("$18.50"),
        "{}",
        cart.html
    );

    // The CTA link is checked by strict mode (it is a partial block, not a hash argument,
    // which handlebars would silently turn into null).
    for name in ["cart-reminder", "cart-discount", "cart-last-chance"] {
        let mut ctx = registry.sample_context(name);
        if let Some(props) = ctx["event"]["properties"].as_object_mut() {
            props.remove("cart_url");
        }
        let err = strict(&registry, name, &ctx).unwrap_err();
        assert!(err.message.contains("event.properties.cart_url"), "{err}");
        assert_eq!(err.file, dir.join(format!("{name}.hbs")));
    }

    // A contact without a first name or discount code still renders strictly.
    let mut bare = registry.sample_context("cart-discount");
    bare["contact"] = json!({"id": "c2", "email": "x@example.com"});
    let r = strict(&registry, "cart-discount", &bare).unwrap();
    assert!(r.html.contains("COMEBACK10"), "{}", r.html);
    let mut bare = registry.sample_context("welcome");
    bare["contact"] = json!({"id": "c2", "email": "x@example.com"});
    let r = strict(&registry, "welcome", &bare).unwrap();
    assert!(r.subject.contains("friend"), "{}", r.subject);
}
