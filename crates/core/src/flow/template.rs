//! Templates in marketer-written texts (`Привет, {{ contact.first_name | default("друг") }}!`).
//!
//! They are Jinja templates run in a sandbox: a template can read the values it is given
//! and nothing else (no files, no includes), and it cannot loop forever or produce a
//! runaway text. The output is plain text; channel adapters escape it for their markup.

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};
use std::io;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Longest text a template may produce (characters).
pub const MAX_OUTPUT_CHARS: usize = 20_000;

/// Instructions one render may run: plenty for a message with a few loops, and a hard
/// stop for an endless one.
const FUEL: u64 = 50_000;

/// How deep macros and nested blocks may go.
const RECURSION_LIMIT: usize = 32;

/// How many compiled templates are kept. A flow has a few dozen texts, a workspace a few
/// hundred; past this the cache starts afresh rather than tracking recency on every hit.
const CACHE_CAPACITY: usize = 2_048;

/// Longer sources are compiled on every render instead of being kept, so the cache's
/// memory stays bounded.
const MAX_CACHED_SOURCE: usize = 16 * 1024;

/// Where `include`, `import` and `extends` are sent: a name no cached template has
/// (every cached name contains template syntax), so they always fail.
const NO_INCLUDES: &str = "(other templates cannot be included)";

/// Why a template could not be compiled or rendered, in plain words with the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What went wrong, e.g. `line 2: syntax error: unexpected end of input`.
    pub message: String,
}

impl TemplateError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The sandboxed template environment, with a cache of compiled templates. Share one per
/// process; it is cheap to render from many threads at once.
#[derive(Debug)]
pub struct Templates {
    env: RwLock<Environment<'static>>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// A sandboxed environment with the `date` filter besides Jinja's built-ins.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        // A missing value must render as nothing and still take attributes and filters,
        // so `{{ contact.fields.city | default("Москва") }}` works for every contact.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        // Cache keys are template sources; a source ending in `.html` must not switch on
        // HTML escaping.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_path_join_callback(|_, _| NO_INCLUDES.into());
        env.set_formatter(|out, state, value| {
            // A cleared attribute is JSON null; a message must not say "none".
            if value.is_none() {
                return Ok(());
            }
            minijinja::escape_formatter(out, state, value)
        });
        // Texts are written with block tags on lines of their own; without these every
        // `{% if %}` line would leave an empty line in the message.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.set_debug(false);
        env.add_filter("date", date_filter);
        Self {
            env: RwLock::new(env),
        }
    }

    /// Renders `template` with the variables in `ctx` (a JSON object).
    pub fn render(&self, template: &str, ctx: &serde_json::Value) -> Result<String, TemplateError> {
        if !has_syntax(template) {
            if template.chars().count() > MAX_OUTPUT_CHARS {
                return Err(too_long());
            }
            return Ok(template.to_owned());
        }
        let ctx = Value::from_serialize(ctx);
        {
            let env = self.read();
            match env.get_template(template) {
                Ok(t) => return run(&t, ctx),
                Err(e) if e.kind() != ErrorKind::TemplateNotFound => return Err(describe(&e)),
                Err(_) => {}
            }
            if template.len() > MAX_CACHED_SOURCE {
                let t = env.template_from_str(template).map_err(|e| describe(&e))?;
                return run(&t, ctx);
            }
        }
        {
            let mut env = self.write();
            if env.templates().count() >= CACHE_CAPACITY {
                env.clear_templates();
            }
            env.add_template_owned(template.to_owned(), template.to_owned())
                .map_err(|e| describe(&e))?;
        }
        let env = self.read();
        match env.get_template(template) {
            Ok(t) => run(&t, ctx),
            // Another thread filled the cache and cleared it in between.
            Err(_) => {
                let t = env.template_from_str(template).map_err(|e| describe(&e))?;
                run(&t, ctx)
            }
        }
    }

    /// Checks the syntax of `template` without rendering it.
    pub fn check(&self, template: &str) -> Result<(), TemplateError> {
        if !has_syntax(template) {
            return Ok(());
        }
        let env = self.read();
        env.template_from_str(template)
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    fn read(&self) -> RwLockReadGuard<'_, Environment<'static>> {
        // The environment is only written whole under the lock, so a panic elsewhere
        // cannot leave it half-changed.
        self.env.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Environment<'static>> {
        self.env.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether the text contains anything minijinja would interpret.
fn has_syntax(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'{' && matches!(w[1], b'{' | b'%' | b'#'))
}

fn run(t: &minijinja::Template<'_, '_>, ctx: Value) -> Result<String, TemplateError> {
    let mut out = Bounded::default();
    if let Err(e) = t.render_captured_to(ctx, &mut out) {
        return Err(if out.overflowed {
            too_long()
        } else {
            describe(&e)
        });
    }
    String::from_utf8(out.buf).map_err(|_| TemplateError::new("the template produced invalid text"))
}

fn too_long() -> TemplateError {
    TemplateError::new(format!(
        "the text is longer than {MAX_OUTPUT_CHARS} characters"
    ))
}

fn describe(e: &Error) -> TemplateError {
    let reason = match e.kind() {
        ErrorKind::OutOfFuel => {
            "the template does too much work (is a loop running too long?)".to_string()
        }
        ErrorKind::TemplateNotFound => "other templates cannot be included".to_string(),
        kind => match e.detail() {
            Some(detail) => format!("{kind}: {detail}"),
            None => kind.to_string(),
        },
    };
    TemplateError::new(match e.line() {
        Some(line) => format!("line {line}: {reason}"),
        None => reason,
    })
}

/// An output that refuses to grow past [`MAX_OUTPUT_CHARS`], so a runaway template is
/// stopped while it writes rather than after the whole text is built.
#[derive(Default)]
struct Bounded {
    buf: Vec<u8>,
    chars: usize,
    overflowed: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Counting the bytes that start a UTF-8 character counts characters even when a
        // write splits one.
        let chars = data.iter().filter(|b| (**b & 0xC0) != 0x80).count();
        if self.chars + chars > MAX_OUTPUT_CHARS {
            self.overflowed = true;
            return Err(io::Error::other("output too long"));
        }
        self.chars += chars;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `{{ fields.webinar_at | date("%d.%m.%Y %H:%M", contact.time_zone) }}`: formats a
/// `YYYY-MM-DD` date or an RFC 3339 moment with strftime directives. A moment is shown
/// in the given IANA time zone, or else in the offset it was written with. Missing
/// values render as nothing.
fn date_filter(value: Value, format: String, tz: Option<Value>) -> Result<String, Error> {
    if value.is_undefined() || value.is_none() {
        return Ok(String::new());
    }
    let fail = |m: String| Error::new(ErrorKind::InvalidOperation, m);
    let Some(text) = value.as_str().map(str::trim) else {
        return Err(fail(format!(
            "date: `{value}` is not a date (expected YYYY-MM-DD or an RFC 3339 time)"
        )));
    };
    // jiff reads a date out of a longer date-time too; only a bare date is a date here.
    if let Some(d) = (text.len() == 10)
        .then(|| text.parse::<jiff::civil::Date>().ok())
        .flatten()
    {
        return jiff::fmt::strtime::format(&format, d).map_err(|e| fail(format!("date: {e}")));
    }
    let ts: jiff::Timestamp = text.parse().map_err(|_| {
        fail(format!(
            "date: `{text}` is not a date (expected YYYY-MM-DD or an RFC 3339 time)"
        ))
    })?;
    let zone_name = tz
        .as_ref()
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let zone = match zone_name {
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|_| fail(format!("date: `{name}` is not a known time zone")))?,
        None => jiff::fmt::temporal::Pieces::parse(text)
            .ok()
            .and_then(|p| p.to_numeric_offset())
            .map(jiff::tz::TimeZone::fixed)
            .unwrap_or(jiff::tz::TimeZone::UTC),
    };
    jiff::fmt::strtime::format(&format, &ts.to_zoned(zone)).map_err(|e| fail(format!("date: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> serde_json::Value {
        json!({
            "contact": {
                "first_name": "Ivan",
                "last_name": null,
                "time_zone": "Europe/Moscow",
            },
            "fields": { "city": "Казань", "birthday": "1990-03-01", "webinar": "2026-05-01T07:00:00Z" },
            "answers": { "q1": "yes", "nested": { "deep": 3 } },
        })
    }

    fn render(t: &str) -> Result<String, TemplateError> {
        Templates::new().render(t, &ctx())
    }

    #[test]
    fn renders_variables_fields_and_answers() {
        assert_eq!(
            render("Hi {{ contact.first_name }} from {{ fields.city }}!").as_deref(),
            Ok("Hi Ivan from Казань!")
        );
        assert_eq!(
            render("{{ answers.q1 }} {{ answers.nested.deep }}").as_deref(),
            Ok("yes 3")
        );
        assert_eq!(
            render("{{ contact.first_name | upper }} {{ fields.city | lower }}").as_deref(),
            Ok("IVAN казань")
        );
    }

    #[test]
    fn default_applies_to_missing_values_and_optionally_to_null() {
        let t = Templates::new();
        assert_eq!(
            t.render(
                "Привет, {{ contact.first_name | default(\"друг\") }}!",
                &json!({"contact": {}})
            )
            .as_deref(),
            Ok("Привет, друг!")
        );
        assert_eq!(
            t.render("{{ contact.first_name | default(\"друг\") }}", &json!({}))
                .as_deref(),
            Ok("друг")
        );
        // Jinja semantics: null is a value for `default`, unless the second argument asks.
        assert_eq!(
            render("[{{ contact.last_name | default(\"x\") }}]").as_deref(),
            Ok("[]")
        );
        assert_eq!(
            render("{{ contact.last_name | default(\"x\", true) }}").as_deref(),
            Ok("x")
        );
        assert_eq!(
            render("{{ fields.none | default(\"x\", true) }}").as_deref(),
            Ok("x")
        );
    }

    #[test]
    fn missing_values_render_empty_without_crashing() {
        assert_eq!(render("[{{ nope }}]").as_deref(), Ok("[]"));
        assert_eq!(render("[{{ nope.deeper.still }}]").as_deref(), Ok("[]"));
        assert_eq!(render("[{{ contact.nope.deeper }}]").as_deref(), Ok("[]"));
        assert_eq!(
            render("{% for x in nope.list %}{{ x }}{% endfor %}ok").as_deref(),
            Ok("ok")
        );
        assert_eq!(
            render("{% if fields.vip %}vip{% else %}regular{% endif %}").as_deref(),
            Ok("regular")
        );
    }

    #[test]
    fn plain_text_is_returned_as_is() {
        let t = "Just text with { braces } and 100% and a trailing newline\n";
        assert_eq!(render(t).as_deref(), Ok(t));
    }

    #[test]
    fn block_lines_leave_no_empty_lines() {
        let t = "Привет!\n{% if fields.city %}\nИз {{ fields.city }}.\n{% endif %}\nПока\n";
        assert_eq!(render(t).as_deref(), Ok("Привет!\nИз Казань.\nПока\n"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let t = Templates::new();
        let e = t
            .check("Hello\n{{ contact.first_name ")
            .expect_err("unclosed");
        assert!(
            e.message.starts_with("line 2: syntax error"),
            "{}",
            e.message
        );
        let e = t
            .render("ok\nok\n{% if x %}", &ctx())
            .expect_err("unclosed");
        assert!(
            e.message.starts_with("line 3: syntax error"),
            "{}",
            e.message
        );
        assert!(t.check("Hi {{ contact.first_name }}").is_ok());
        assert!(t.check("plain").is_ok());
    }

    #[test]
    fn endless_loops_and_huge_output_are_stopped() {
        let t = Templates::new();
        let e = t
            .render(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                &ctx(),
            )
            .expect_err("out of fuel");
        assert!(e.message.contains("too much work"), "{}", e.message);
        let e = t
            .render("{{ \"x\" * 1000000 }}", &ctx())
            .expect_err("too long");
        assert!(e.message.contains("longer than"), "{}", e.message);
        let e = t
            .render("{% for i in range(5000) %}0123456789{% endfor %}", &ctx())
            .expect_err("too long");
        assert!(e.message.contains("longer than"), "{}", e.message);
        let e = t
            .render(
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                &ctx(),
            )
            .expect_err("recursion");
        assert!(!e.message.is_empty());
        assert!(t.render(&"x".repeat(MAX_OUTPUT_CHARS + 1), &ctx()).is_err());
    }

    #[test]
    fn includes_are_refused() {
        let t = Templates::new();
        let src = "{{ 1 }}";
        assert_eq!(t.render(src, &ctx()).as_deref(), Ok("1"));
        let e = t
            .render(&format!("{{% include {src:?} %}}"), &ctx())
            .expect_err("no includes");
        assert!(e.message.contains("cannot be included"), "{}", e.message);
    }

    #[test]
    fn html_is_not_escaped() {
        let t = Templates::new();
        assert_eq!(
            t.render("{{ x }} page.html", &json!({"x": "<b>&</b>"}))
                .as_deref(),
            Ok("<b>&</b> page.html")
        );
    }

    #[test]
    fn date_filter_formats_dates_and_moments() {
        assert_eq!(
            render("{{ fields.birthday | date(\"%d.%m.%Y\") }}").as_deref(),
            Ok("01.03.1990")
        );
        assert_eq!(
            render("{{ fields.webinar | date(\"%d.%m %H:%M\", contact.time_zone) }}").as_deref(),
            Ok("01.05 10:00")
        );
        assert_eq!(
            render("{{ fields.webinar | date(\"%H:%M\") }}").as_deref(),
            Ok("07:00")
        );
        assert_eq!(
            render("{{ \"2026-05-01T10:00:00+03:00\" | date(\"%H:%M %:z\") }}").as_deref(),
            Ok("10:00 +03:00")
        );
        assert_eq!(
            render("[{{ fields.missing | date(\"%d\") }}]").as_deref(),
            Ok("[]")
        );
        assert!(render("{{ fields.city | date(\"%d\") }}").is_err());
        assert!(render("{{ fields.webinar | date(\"%H\", \"Mars/Base\") }}").is_err());
    }

    #[test]
    fn cache_serves_repeated_renders() {
        let t = Templates::new();
        for i in 0..3 {
            assert_eq!(
                t.render("{{ n }}", &json!({ "n": i })).as_deref(),
                Ok(i.to_string().as_str())
            );
        }
        for i in 0..(CACHE_CAPACITY + 10) {
            let src = format!("{{{{ n }}}}{i}");
            assert_eq!(t.render(&src, &json!({ "n": 1 })), Ok(format!("1{i}")));
        }
    }
}
