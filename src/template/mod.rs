//! Email templates: loading `templates/` (bodies with YAML front matter, optional
//! plain-text bodies, layouts and partials), rendering them into a subject, an HTML
//! document and a plain-text part, and the sample context `herald validate` and
//! `herald preview` render against.
//!
//! Invariants:
//! - Two handlebars registries: `html` escapes values, `text` (subjects, preheaders,
//!   `.txt.hbs` bodies) uses `no_escape`, so "Tom & Jerry" stays intact outside HTML.
//! - Both are strict, so a misspelt variable is an error, not a silently empty string.
//!   Each has a non-strict twin, used only by [`Mode::Lenient`] after a strict render
//!   has failed.
//! - Every error names the file and a file-relative line/column: front-matter and
//!   handlebars positions are shifted by the lines/columns that precede them in the file.
//! - Layouts, partials and bodies live under distinct registry keys, so a template
//!   named `footer` cannot shadow the `footer` partial.

mod front_matter;
mod helpers;
mod html;
mod sample;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use handlebars::{Handlebars, RenderError, RenderErrorReason};
use serde_json::Value;

use front_matter::{FrontMatter, FrontMatterError, Located};

/// How [`TemplateRegistry::render`] treats variables missing from the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any missing variable is an error naming the file, line and column.
    Strict,
    /// Missing variables render as empty strings and set
    /// [`Rendered::missing_variables`]; syntax and helper errors still fail.
    Lenient,
}

/// The output of rendering one template for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject on a single line (trimmed, whitespace runs and newlines collapsed).
    pub subject: String,
    /// The full HTML document after the layout, with the preheader (if any) as a
    /// hidden div right after `<body>`.
    pub html: String,
    /// The `text/plain` part: `<name>.txt.hbs` when present, otherwise derived from
    /// the HTML document at 78 columns.
    pub text: String,
    /// The front matter's `from`, overriding the configured sender.
    pub from: Option<String>,
    /// The rendered preheader (inbox preview text), on a single line; `None` when the
    /// template has none or it rendered empty.
    pub preheader: Option<String>,
    /// `true` when a [`Mode::Lenient`] render had to replace missing variables with "".
    pub missing_variables: bool,
}

/// A template problem, located in a file. Displays as `templates/cart.hbs:3:5: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    /// The file the problem is in (the `.hbs` file for render errors without a better location).
    pub file: PathBuf,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// 1-based column in `file`, when known.
    pub column: Option<usize>,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl TemplateError {
    fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line,
            column,
            message: message.into(),
        }
    }

    fn from_front_matter(file: &Path, err: FrontMatterError) -> Self {
        Self::new(file, Some(err.line), err.column, err.message)
    }
}

/// The loaded templates of one `templates/` directory, ready to render.
///
/// Cheap to share behind an `Arc`; rendering takes `&self`.
#[derive(Debug)]
pub struct TemplateRegistry {
    /// The directory the templates came from, for naming files in errors.
    dir: PathBuf,
    strict: Registries,
    /// Identical to `strict` except for strict mode; see [`Mode::Lenient`].
    lenient: Registries,
    templates: BTreeMap<String, Entry>,
    /// Where each registered handlebars template came from, by registry key.
    origins: HashMap<String, Origin>,
}

/// The escaping and the non-escaping registry, with the same partials and helpers.
#[derive(Debug, Clone)]
struct Registries {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
}

impl Registries {
    fn new() -> Self {
        let mut html = Handlebars::new();
        let mut text = Handlebars::new();
        text.register_escape_fn(handlebars::no_escape);
        for registry in [&mut html, &mut text] {
            registry.set_strict_mode(true);
            helpers::register(registry);
        }
        Self { html, text }
    }

    fn non_strict(&self) -> Self {
        let mut lenient = self.clone();
        lenient.html.set_strict_mode(false);
        lenient.text.set_strict_mode(false);
        lenient
    }
}

/// What the registry knows about one template besides its compiled parts.
#[derive(Debug)]
struct Entry {
    file: PathBuf,
    has_text: bool,
    has_preheader: bool,
    layout: Option<String>,
    from: Option<String>,
    /// The front matter `sample:` mappings (HTML then text file), merged.
    sample: Value,
}

/// Maps a registry key back to its file: line 1, column 1 of the registered source is
/// `first_line`, `first_column` of `file`.
#[derive(Debug)]
struct Origin {
    file: PathBuf,
    first_line: usize,
    first_column: usize,
}

impl Origin {
    fn whole_file(file: &Path) -> Self {
        Self::at(file, 1, 1)
    }

    fn at(file: &Path, first_line: usize, first_column: usize) -> Self {
        Self {
            file: file.to_path_buf(),
            first_line,
            first_column,
        }
    }

    fn position(&self, line: usize, column: usize) -> (usize, usize) {
        let file_line = self.first_line + line.saturating_sub(1);
        let file_column = if line <= 1 {
            self.first_column + column.saturating_sub(1)
        } else {
            column
        };
        (file_line, file_column)
    }
}

// Registry keys. The prefixes keep bodies, layouts, subjects and text parts apart from
// each other and from partials, which must be registered under their plain name for
// `{{> footer}}` to find them; template names cannot contain ':'.
fn body_key(name: &str) -> String {
    format!("template:{name}")
}
fn text_key(name: &str) -> String {
    format!("text:{name}")
}
fn subject_key(name: &str) -> String {
    format!("subject:{name}")
}
fn preheader_key(name: &str) -> String {
    format!("preheader:{name}")
}
fn layout_key(name: &str) -> String {
    format!("layout:{name}")
}

const LAYOUTS_DIR: &str = "layouts/";
const PARTIALS_DIR: &str = "partials/";

impl TemplateRegistry {
    /// Loads every template under `dir`: `<name>.hbs` (HTML body with YAML front
    /// matter), optional `<name>.txt.hbs` (plain-text body, front matter optional and
    /// limited to `sample:`), `layouts/<name>.hbs` and `partials/<name>.hbs`. Other
    /// subdirectories hold templates too: `emails/x.hbs` is named `emails/x`. Files not
    /// ending in `.hbs` and hidden files are ignored.
    ///
    /// A missing directory is an empty registry. Errors name the file and, where known,
    /// the line and column; all problems are reported, not just the first.
    pub fn load(dir: &Path) -> Result<Self, Vec<TemplateError>> {
        let files = collect_files(dir)?;
        let mut loader = Loader::new(dir);
        let mut html_files = Vec::new();
        let mut text_files = Vec::new();
        // Layouts and partials first: bodies refer to them.
        for (rel, path) in files {
            match classify(&rel) {
                Err(message) => loader
                    .errors
                    .push(TemplateError::new(path, None, None, message)),
                Ok(Kind::Layout(name)) => loader.add_layout(&name, &path),
                Ok(Kind::Partial(name)) => loader.add_partial(&name, &path),
                Ok(Kind::Html(name)) => html_files.push((name, path)),
                Ok(Kind::Text(name)) => text_files.push((name, path)),
            }
        }
        for (name, path) in html_files {
            loader.add_html(&name, &path);
        }
        for (name, path) in text_files {
            loader.add_text(&name, &path);
        }
        loader.finish()
    }

    /// Whether a template called `name` (an HTML `<name>.hbs`) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// The names of all templates, sorted.
    pub fn names(&self) -> Vec<String> {
        self.templates.keys().cloned().collect()
    }

    /// Renders template `name` with `ctx`, a JSON object with keys such as `contact`,
    /// `event`, `workflow` and `unsubscribe_url`.
    ///
    /// `subject_override`, when given, is a handlebars string rendered (without HTML
    /// escaping) instead of the front-matter subject. In [`Mode::Lenient`] a render
    /// that fails only because of missing variables is retried with missing values as
    /// empty strings, and the result is flagged with `missing_variables`.
    pub fn render(
        &self,
        name: &str,
        ctx: &Value,
        subject_override: Option<&str>,
        mode: Mode,
    ) -> Result<Rendered, TemplateError> {
        let Some(entry) = self.templates.get(name) else {
            return Err(TemplateError::new(
                self.dir.join(format!("{name}.hbs")),
                None,
                None,
                format!("no template named `{name}`"),
            ));
        };
        let strict = self.render_with(&self.strict, name, entry, ctx, subject_override);
        match (strict, mode) {
            (Ok(rendered), _) => Ok(rendered),
            (Err(err), Mode::Strict) => Err(err),
            // The two registry sets differ only in strict mode, so when the non-strict
            // render succeeds, missing variables were the only problem. When it fails,
            // its error is the real one (a helper or a partial), so that is returned.
            (Err(_), Mode::Lenient) => {
                let mut rendered =
                    self.render_with(&self.lenient, name, entry, ctx, subject_override)?;
                rendered.missing_variables = true;
                Ok(rendered)
            }
        }
    }

    /// The context `herald validate` and `herald preview` use when given no data: a
    /// built-in sample contact (Ana Silva, ana@example.com, Lisbon, …), a sample event
    /// with empty properties, the workflow `sample` and a local unsubscribe URL,
    /// deep-merged with the template's front-matter `sample:` mapping. Unknown names
    /// get the built-in sample alone.
    pub fn sample_context(&self, name: &str) -> Value {
        let mut ctx = sample::base();
        if let Some(entry) = self.templates.get(name) {
            sample::deep_merge(&mut ctx, &entry.sample);
        }
        ctx
    }

    /// Renders every template strictly against its sample context and returns every
    /// failure; empty means all templates render.
    pub fn check_all(&self) -> Vec<TemplateError> {
        self.templates
            .keys()
            .filter_map(|name| {
                self.render(name, &self.sample_context(name), None, Mode::Strict)
                    .err()
            })
            .collect()
    }

    fn render_with(
        &self,
        regs: &Registries,
        name: &str,
        entry: &Entry,
        ctx: &Value,
        subject_override: Option<&str>,
    ) -> Result<Rendered, TemplateError> {
        let Some(fields) = ctx.as_object() else {
            return Err(TemplateError::new(
                &entry.file,
                None,
                None,
                "the render context must be a JSON object",
            ));
        };
        let err = |e: RenderError| self.render_error(&e, &entry.file);
        let hb_ctx = handlebars::Context::from(ctx.clone());

        let subject = match subject_override {
            Some(source) => regs
                .text
                .render_template_with_context(source, &hb_ctx)
                .map_err(|e| self.subject_override_error(&e, &entry.file))?,
            None => regs
                .text
                .render_with_context(&subject_key(name), &hb_ctx)
                .map_err(err)?,
        };
        let subject = html::single_line(&subject);

        let preheader = if entry.has_preheader {
            let rendered = regs
                .text
                .render_with_context(&preheader_key(name), &hb_ctx)
                .map_err(err)?;
            Some(html::single_line(&rendered)).filter(|p| !p.is_empty())
        } else {
            None
        };

        let body = regs
            .html
            .render_with_context(&body_key(name), &hb_ctx)
            .map_err(err)?;
        let document = match &entry.layout {
            None => body,
            Some(layout) => {
                // The layout sees the recipient's context plus what it wraps; these three
                // keys shadow any same-named context keys.
                let mut layout_ctx = fields.clone();
                layout_ctx.insert("body".to_owned(), Value::String(body));
                layout_ctx.insert("subject".to_owned(), Value::String(subject.clone()));
                layout_ctx.insert(
                    "preheader".to_owned(),
                    preheader.clone().map_or(Value::Null, Value::String),
                );
                regs.html
                    .render(&layout_key(layout), &Value::Object(layout_ctx))
                    .map_err(err)?
            }
        };

        let text = if entry.has_text {
            regs.text
                .render_with_context(&text_key(name), &hb_ctx)
                .map_err(err)?
        } else {
            // Derived before the preheader is injected: html2text does not know the div
            // is hidden and would put it at the top of the text.
            html::html_to_text(&document).map_err(|e| {
                TemplateError::new(
                    &entry.file,
                    None,
                    None,
                    format!("cannot derive the plain-text part: {e}"),
                )
            })?
        };

        let html = match &preheader {
            Some(p) => html::inject_preheader(&document, p),
            None => document,
        };

        Ok(Rendered {
            subject,
            html,
            text,
            from: entry.from.clone(),
            preheader,
            missing_variables: false,
        })
    }

    /// Locates a render error in the file the failing template came from (a partial,
    /// a layout, the front matter or the body).
    fn render_error(&self, err: &RenderError, fallback: &Path) -> TemplateError {
        let (position, message) = describe_render_error(err);
        let origin = err
            .template_name
            .as_ref()
            .and_then(|key| self.origins.get(key));
        match origin {
            Some(origin) => {
                let (line, column) = position.map_or((None, None), |(l, c)| {
                    let (l, c) = origin.position(l, c);
                    (Some(l), Some(c))
                });
                TemplateError::new(&origin.file, line, column, message)
            }
            None => TemplateError::new(fallback, None, None, message),
        }
    }

    /// The override string does not come from a file, so its position goes into the
    /// message rather than the file's line/column.
    fn subject_override_error(&self, err: &RenderError, file: &Path) -> TemplateError {
        if err.template_name.is_some() {
            // Failed inside a partial the override included; that one has a file.
            return self.render_error(err, file);
        }
        let (position, message) = describe_render_error(err);
        let message = match position {
            Some((line, column)) => {
                format!("subject override (line {line}, column {column}): {message}")
            }
            None => format!("subject override: {message}"),
        };
        TemplateError::new(file, None, None, message)
    }
}

/// The position (in the registered source) and a readable message for a render error.
fn describe_render_error(err: &RenderError) -> (Option<(usize, usize)>, String) {
    let position = err.line_no.zip(err.column_no);
    match err.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => (
            position,
            format!(
                "missing variable `{path}` (strict mode; wrap optional values in \
                 `default` or `#if`)"
            ),
        ),
        RenderErrorReason::MissingVariable(None) => {
            (position, "missing variable (strict mode)".to_owned())
        }
        RenderErrorReason::PartialNotFound(name) => (
            position,
            format!("partial `{name}` not found (expected {PARTIALS_DIR}{name}.hbs)"),
        ),
        RenderErrorReason::TemplateError(e) => (position.or(e.pos()), e.reason().to_string()),
        other => (position, other.to_string()),
    }
}

/// Collects and registers templates, accumulating every error instead of stopping at
/// the first.
struct Loader {
    dir: PathBuf,
    regs: Registries,
    templates: BTreeMap<String, Entry>,
    origins: HashMap<String, Origin>,
    layouts: Vec<String>,
    errors: Vec<TemplateError>,
}

impl Loader {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            regs: Registries::new(),
            templates: BTreeMap::new(),
            origins: HashMap::new(),
            layouts: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn read(&mut self, path: &Path) -> Option<String> {
        match fs::read_to_string(path) {
            Ok(source) => Some(source),
            Err(e) => {
                self.errors.push(TemplateError::new(
                    path,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ));
                None
            }
        }
    }

    /// Compiles `source` into `html` and/or `text` under `key`, remembering its origin.
    fn compile(&mut self, key: String, source: &str, origin: Origin, html: bool, text: bool) {
        let mut results = Vec::new();
        if html {
            results.push(self.regs.html.register_template_string(&key, source));
        }
        if text {
            results.push(self.regs.text.register_template_string(&key, source));
        }
        // Both registries parse the same source, so the first error says it all.
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            let (line, column) = e.pos().map_or((None, None), |(l, c)| {
                let (l, c) = origin.position(l, c);
                (Some(l), Some(c))
            });
            self.errors.push(TemplateError::new(
                &origin.file,
                line,
                column,
                e.reason().to_string(),
            ));
        }
        self.origins.insert(key, origin);
    }

    fn add_layout(&mut self, name: &str, path: &Path) {
        if let Some(source) = self.read(path) {
            self.compile(
                layout_key(name),
                &source,
                Origin::whole_file(path),
                true,
                false,
            );
            self.layouts.push(name.to_owned());
        }
    }

    fn add_partial(&mut self, name: &str, path: &Path) {
        if let Some(source) = self.read(path) {
            self.compile(
                name.to_owned(),
                &source,
                Origin::whole_file(path),
                true,
                true,
            );
        }
    }

    fn add_html(&mut self, name: &str, path: &Path) {
        let Some(source) = self.read(path) else {
            return;
        };
        let split = match front_matter::split(&source) {
            Ok(split) => split,
            Err(e) => return self.errors.push(TemplateError::from_front_matter(path, e)),
        };
        let Some(fm) = split.front_matter else {
            return self.errors.push(TemplateError::new(
                path,
                Some(1),
                Some(1),
                "missing front matter: start the file with a `---` line, then at least \
                 `subject: …`, then another `---` line",
            ));
        };
        let FrontMatter {
            subject,
            preheader,
            from,
            layout,
            sample,
        } = fm;
        let Some(subject) = subject else {
            return self.errors.push(TemplateError::new(
                path,
                Some(1),
                Some(1),
                "front matter: `subject` is required",
            ));
        };

        if let Some(layout) = &layout
            && !self.layouts.contains(&layout.value)
        {
            self.errors.push(TemplateError::new(
                path,
                Some(layout.line),
                Some(layout.column),
                format!(
                    "layout `{0}` does not exist (expected {LAYOUTS_DIR}{0}.hbs)",
                    layout.value
                ),
            ));
        }

        self.compile_located(subject_key(name), &subject, path);
        if let Some(preheader) = &preheader {
            self.compile_located(preheader_key(name), preheader, path);
        }
        let body_origin = Origin::at(path, split.body_line_offset + 1, 1);
        self.compile(body_key(name), split.body, body_origin, true, false);

        self.templates.insert(
            name.to_owned(),
            Entry {
                file: path.to_path_buf(),
                has_text: false,
                has_preheader: preheader.is_some(),
                layout: layout.map(|l| l.value),
                from: from.map(|f| f.value),
                sample: sample.map_or_else(|| Value::Object(Default::default()), |s| s.value),
            },
        );
    }

    /// Compiles a front-matter string (subject, preheader) into the text registry.
    fn compile_located(&mut self, key: String, value: &Located<String>, path: &Path) {
        let origin = Origin::at(path, value.content_line, value.content_column);
        self.compile(key, &value.value, origin, false, true);
    }

    fn add_text(&mut self, name: &str, path: &Path) {
        let Some(source) = self.read(path) else {
            return;
        };
        let split = match front_matter::split(&source) {
            Ok(split) => split,
            Err(e) => return self.errors.push(TemplateError::from_front_matter(path, e)),
        };
        let mut sample = None;
        if let Some(fm) = split.front_matter {
            // Subject, sender and layout belong to the HTML file; accepting them here
            // would leave two places to look for them.
            for (key, line, column) in fm.header_keys() {
                self.errors.push(TemplateError::new(
                    path,
                    Some(line),
                    Some(column),
                    format!(
                        "front matter: `{key}` belongs in {name}.hbs; a .txt.hbs front matter \
                         may only hold `sample`"
                    ),
                ));
            }
            sample = fm.sample.map(|s| s.value);
        }
        let origin = Origin::at(path, split.body_line_offset + 1, 1);
        self.compile(text_key(name), split.body, origin, false, true);

        match self.templates.get_mut(name) {
            Some(entry) => {
                entry.has_text = true;
                if let Some(sample) = sample {
                    sample::deep_merge(&mut entry.sample, &sample);
                }
            }
            // No entry also when the HTML file failed to load; only complain when it
            // does not exist at all, the HTML file has its own error.
            None if !path.with_file_name(format!("{}.hbs", leaf(name))).exists() => {
                self.errors.push(TemplateError::new(
                    path,
                    None,
                    None,
                    format!("plain-text body without an HTML template: add {name}.hbs"),
                ));
            }
            None => {}
        }
    }

    fn finish(self) -> Result<TemplateRegistry, Vec<TemplateError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        Ok(TemplateRegistry {
            dir: self.dir,
            lenient: self.regs.non_strict(),
            strict: self.regs,
            templates: self.templates,
            origins: self.origins,
        })
    }
}

/// The last path segment of a template name (`emails/x` → `x`).
fn leaf(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// What a file under the templates directory is.
enum Kind {
    Html(String),
    Text(String),
    Layout(String),
    Partial(String),
}

/// Classifies a `.hbs` file by its path relative to the templates directory
/// (always `/`-separated).
fn classify(rel: &str) -> Result<Kind, String> {
    let stem = rel.strip_suffix(".hbs").unwrap_or(rel);
    let (kind, name): (fn(String) -> Kind, &str) =
        if let Some(name) = stem.strip_prefix(LAYOUTS_DIR) {
            (Kind::Layout, name)
        } else if let Some(name) = stem.strip_prefix(PARTIALS_DIR) {
            (Kind::Partial, name)
        } else if let Some(name) = stem.strip_suffix(".txt") {
            (Kind::Text, name)
        } else {
            (Kind::Html, stem)
        };
    let valid = !name.is_empty()
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(kind(name.to_owned()))
    } else {
        Err(format!(
            "`{name}` is not a valid template name: use letters, digits, '-' and '_' \
             (plain-text bodies are `<name>.txt.hbs`)"
        ))
    }
}

/// Every `.hbs` file under `dir` with its `/`-separated relative path, sorted so that
/// loading (and the order of errors) does not depend on the file system.
fn collect_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, Vec<TemplateError>> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(vec![TemplateError::new(
                dir,
                None,
                None,
                format!("cannot read the templates directory: {e}"),
            )]);
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(vec![TemplateError::new(
                dir,
                None,
                None,
                "the templates path is not a directory",
            )]);
        }
        Ok(_) => {}
    }
    let mut files = Vec::new();
    let mut errors = Vec::new();
    walk(dir, "", 0, &mut files, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    files.sort();
    Ok(files)
}

/// How deep `walk` descends; a symlink pointing at its own ancestor would otherwise
/// recurse until the stack overflows.
const MAX_DEPTH: usize = 16;

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    files: &mut Vec<(String, PathBuf)>,
    errors: &mut Vec<TemplateError>,
) {
    if depth > MAX_DEPTH {
        errors.push(TemplateError::new(
            dir,
            None,
            None,
            format!("directories nested more than {MAX_DEPTH} deep (a symlink loop?)"),
        ));
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(TemplateError::new(
                dir,
                None,
                None,
                format!("cannot read: {e}"),
            ));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(TemplateError::new(
                    dir,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let path = entry.path();
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            errors.push(TemplateError::new(
                &path,
                None,
                None,
                "file name is not valid UTF-8",
            ));
            continue;
        };
        // Editor swap files, `.git` and friends.
        if file_name.starts_with('.') {
            continue;
        }
        let rel = format!("{prefix}{file_name}");
        // `fs::metadata` follows symlinks, so a symlinked template or directory works.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, &format!("{rel}/"), depth + 1, files, errors),
            Ok(_) if file_name.ends_with(".hbs") => files.push((rel, path)),
            Ok(_) => {}
            Err(e) => errors.push(TemplateError::new(
                &path,
                None,
                None,
                format!("cannot read: {e}"),
            )),
        }
    }
}
