//! HTML output and form input: every value written into a page goes through [`escape`] (or
//! [`Html::text`]), and every query string and form body through [`Fields::parse`], which
//! bounds it and refuses a repeated name.

use std::fmt::Write;

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The largest form body or query string read.
pub const MAX_FORM_BYTES: usize = 4096;
/// The most fields in one form or query string.
const MAX_FIELDS: usize = 16;

/// `text` with `& < > " '` replaced by their entities: safe in element content and in quoted
/// attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for a URL's path segment or query value.
pub fn url_component(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// A page being written: markup is pushed as trusted literals, values through `text`.
#[derive(Default)]
pub struct Html(String);

impl Html {
    /// Appends trusted markup (a literal of this crate, never a value).
    pub fn raw(&mut self, markup: &str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Appends a value, escaped.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.0.push_str(&escape(value));
        self
    }

    /// Appends a number.
    pub fn number(&mut self, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, "{value}");
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A page around `body`: the head with the stylesheet and script (same origin only), and the
/// navigation when signed in (with the sign-out form carrying the CSRF token).
pub fn page(title: &str, signed_in: Option<(&str, &str)>, body: &str) -> String {
    let mut html = Html::default();
    html.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>")
        .text(title)
        .raw(" · certfleet</title><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw(
            "<link rel=\"stylesheet\" href=\"/assets/console.css\"><script src=\"/assets/console.js\" defer></script>",
        );
    if let Some((_, csrf)) = signed_in {
        html.raw("<meta name=\"csrf-token\" content=\"").text(csrf).raw("\">");
    }
    html.raw("</head><body><header><span class=\"brand\">certfleet</span>");
    if let Some((account, csrf)) = signed_in {
        html.raw("<nav><a href=\"/overview\">Overview</a><a href=\"/certificates\">Certificates</a><a href=\"/cas\">CAs</a><a href=\"/rotations\">Rotations</a><a href=\"/audits\">Audits</a><a href=\"/endpoints\">Endpoints</a></nav>")
            .raw("<span class=\"account\">account <b id=\"account-id\">")
            .text(account)
            .raw("</b></span><form method=\"post\" action=\"/signout\" class=\"inline\">")
            .raw("<input type=\"hidden\" name=\"csrf\" value=\"")
            .text(csrf)
            .raw("\"><button type=\"submit\" id=\"sign-out\">Sign out</button></form>");
    }
    html.raw("</header><main><h1>").text(title).raw("</h1>").raw(body).raw("</main></body></html>");
    html.into_string()
}

/// Why a query string or form was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadInput {
    TooLarge,
    TooManyFields,
    Repeated(String),
    NotUtf8,
}

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadInput::TooLarge => write!(f, "larger than {MAX_FORM_BYTES} bytes"),
            BadInput::TooManyFields => write!(f, "more than {MAX_FIELDS} fields"),
            BadInput::Repeated(name) => write!(f, "the field {name:?} is repeated"),
            BadInput::NotUtf8 => f.write_str("not UTF-8"),
        }
    }
}

/// The fields of a query string or an `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Parses `name=value&...` (`+` is a space), bounded in size and count; a name given twice
    /// is refused.
    pub fn parse(text: &str) -> Result<Fields, BadInput> {
        if text.len() > MAX_FORM_BYTES {
            return Err(BadInput::TooLarge);
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            if fields.len() == MAX_FIELDS {
                return Err(BadInput::TooManyFields);
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |part: &str| {
                percent_decode_str(&part.replace('+', " "))
                    .decode_utf8()
                    .map(|text| text.into_owned())
                    .map_err(|_| BadInput::NotUtf8)
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if fields.iter().any(|(seen, _)| *seen == name) {
                return Err(BadInput::Repeated(name));
            }
            fields.push((name, value));
        }
        Ok(Fields(fields))
    }

    /// The names of the fields, in the order given (each once).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }

    /// The value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(field, _)| field == name).map(|(_, value)| value.trim()).filter(|value| !value.is_empty())
    }
}

/// A time as `2026-06-01 12:00 UTC`.
pub fn when(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        for (input, expected) in [
            ("plain", "plain"),
            ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
            ("a\"b'c", "a&quot;b&#39;c"),
            ("&amp;", "&amp;amp;"),
            ("thing-ü", "thing-ü"),
        ] {
            assert_eq!(escape(input), expected);
        }
        let page = page("<b>", Some(("<i>", "\"><script>")), "");
        assert!(!page.contains("<b> ·") && !page.contains("<i>") && !page.contains("\"><script>"));
    }

    #[test]
    fn fields_are_decoded_bounded_and_never_repeated() {
        let fields = Fields::parse("cn=sensor+1&id=%41b&empty=&status=ACTIVE").unwrap();
        assert_eq!(fields.get("cn"), Some("sensor 1"));
        assert_eq!(fields.get("id"), Some("Ab"));
        assert_eq!(fields.get("empty"), None);
        assert_eq!(fields.get("missing"), None);
        for (input, error) in [
            ("a=1&a=2", BadInput::Repeated("a".into())),
            ("a=1&%61=2", BadInput::Repeated("a".into())),
            ("a=%ff", BadInput::NotUtf8),
        ] {
            assert_eq!(Fields::parse(input).unwrap_err(), error, "{input}");
        }
        assert_eq!(Fields::parse(&"a".repeat(MAX_FORM_BYTES + 1)).unwrap_err(), BadInput::TooLarge);
        let many: Vec<String> = (0..17).map(|n| format!("f{n}=1")).collect();
        assert_eq!(Fields::parse(&many.join("&")).unwrap_err(), BadInput::TooManyFields);
    }

    #[test]
    fn urls_encode_everything_but_letters_and_digits() {
        assert_eq!(url_component("a b/&\"<"), "a%20b%2F%26%22%3C");
    }
}
