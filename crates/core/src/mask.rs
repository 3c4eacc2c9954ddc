//! What sitemon shows of URLs and of text from outside: the one place that masks a URL's
//! credentials and query values, finds every URL a message quotes, and bounds a message.
//!
//! Every output uses it: the checker's events, the sync's rows, the CLI, the dashboard and the
//! notifications. A URL may carry a password (`https://user:pw@host/`) or a token in its query
//! (`?token=…`); an error message may quote any URL, not only the site's (a redirect's hop, a
//! `Location` header). Only `sitemon export`, which must round-trip, prints a URL whole.
//!
//! ```
//! use sitemon_core::mask::{mask_url, mask_urls_in, bound_text};
//!
//! assert_eq!(mask_url("https://u:pw@example.com/h?token=abc"), "https://***@example.com/h?token=***");
//! assert_eq!(
//!     mask_urls_in(r#"redirects to "https://u:pw@other.example/x?t=1""#),
//!     r#"redirects to "https://***@other.example/x?t=***""#,
//! );
//! assert_eq!(bound_text("two\n  lines", 1024), "two lines");
//! ```

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use url::Url;

/// What stands for a masked part.
pub const MASK: &str = "***";

/// The most bytes of a message sitemon writes (an error in an event, a row, a notification),
/// before the mark that says it was cut.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `url` with its user and password replaced by [`MASK`] and every query value too (the
/// names stay: `?token=***&page=***`); a fragment is dropped. Anything but an http(s) URL
/// keeps only what comes after its last `@` (before it, a `***`) up to the first `?` or `#`
/// (after it, a `***`).
#[must_use]
pub fn mask_url(url: &str) -> String {
    let parsed = Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    let Some(mut parsed) = parsed else {
        return mask_opaque(url);
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_password(None);
        let _ = parsed.set_username(MASK);
    }
    if parsed.query().is_some() {
        let names: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if names.is_empty() {
            parsed.set_query(None);
        } else {
            let query = names
                .iter()
                .map(|name| format!("{}={MASK}", url_encode(name)))
                .collect::<Vec<_>>()
                .join("&");
            parsed.set_query(Some(&query));
        }
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(None);
    }
    parsed.to_string()
}

/// A URL the `url` crate does not take as http(s): everything before the last `@` of the part
/// before `?`/`#` (after a `scheme://`) and everything after the first `?`/`#` masked.
fn mask_opaque(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let head = &url[..cut];
    let head = match head.rfind('@') {
        Some(at) => {
            let scheme = head.find("://").map_or(0, |i| i + 3);
            format!("{}{MASK}@{}", &head[..scheme.min(at)], &head[at + 1..])
        }
        None => head.to_owned(),
    };
    if cut < url.len() {
        format!("{head}?{MASK}")
    } else {
        head
    }
}

fn url_encode(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}

/// A URL token: an optional scheme, `://`, then anything up to whitespace, a quote, an angle
/// bracket, a backtick or a typographic quote. Parentheses and brackets stay in the token (a password may hold
/// them; an IPv6 host does), the unbalanced ones at its end are cut off by [`url_end`].
static URL_TOKEN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"(?:[A-Za-z][A-Za-z0-9+.\-]*)?://[^\s"'<>`«»“”‘’]*"#).ok());

/// `text` with every URL it quotes masked by [`mask_url`]: any `scheme://…` token (every
/// hop, a `Location` value, a URL in quotes or parentheses), and a bare `://user:pw@host`.
/// Punctuation that ends a sentence (`.,;:!?`) and a closing bracket the token did not open
/// stay outside the URL. Linear in the length of `text`.
#[must_use]
pub fn mask_urls_in(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let Some(pattern) = URL_TOKEN.as_ref() else {
        // The pattern is a constant that compiles; should it not, mask the whole text
        // rather than let a password through.
        return Cow::Owned(MASK.to_owned());
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for found in pattern.find_iter(text) {
        let token = found.as_str();
        let end = url_end(token);
        out.push_str(&text[last..found.start()]);
        out.push_str(&mask_url(&token[..end]));
        last = found.start() + end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// Where the URL in `token` ends: trailing sentence punctuation and unbalanced closing
/// brackets cut off (in one pass from the end, so that the whole is linear).
fn url_end(token: &str) -> usize {
    let mut balance = [0i64; 3];
    for c in token.chars() {
        match c {
            '(' => balance[0] += 1,
            ')' => balance[0] -= 1,
            '[' => balance[1] += 1,
            ']' => balance[1] -= 1,
            '{' => balance[2] += 1,
            '}' => balance[2] -= 1,
            _ => {}
        }
    }
    let mut end = token.len();
    for c in token.chars().rev() {
        let slot = match c {
            '.' | ',' | ';' | ':' | '!' | '?' => None,
            ')' => Some(0),
            ']' => Some(1),
            '}' => Some(2),
            _ => break,
        };
        if let Some(slot) = slot {
            if balance[slot] >= 0 {
                break;
            }
            balance[slot] += 1;
        }
        end -= c.len_utf8();
    }
    end
}

/// `text` folded onto one line (every run of whitespace, newlines included, becomes one space;
/// none at either end) and cut to at most `max` bytes on a character boundary, the cut marked
/// as `… [cut, N bytes]` where N is the folded length. Borrowed when nothing changes.
#[must_use]
pub fn bound_text(text: &str, max: usize) -> Cow<'_, str> {
    let folded = fold_whitespace(text);
    if folded.len() <= max {
        return folded;
    }
    let mut cut = max;
    while !folded.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}… [cut, {} bytes]", &folded[..cut], folded.len()))
}

/// `text` on one line: every run of whitespace one space, none at either end.
fn fold_whitespace(text: &str) -> Cow<'_, str> {
    let mut previous_space = true;
    let mut clean = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if previous_space || c != ' ' {
                clean = false;
                break;
            }
            previous_space = true;
        } else {
            previous_space = false;
        }
    }
    if clean && !text.ends_with(' ') {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A URL as an event carries it (`url`, `final_url`): masked ([`mask_url`]), then bounded
/// to [`MAX_MESSAGE_BYTES`] (a `Location` from outside may be any length).
#[must_use]
pub fn event_url(url: &str) -> String {
    bound_text(&mask_url(url), MAX_MESSAGE_BYTES).into_owned()
}

/// What sitemon writes of a message from outside (an error text): every URL masked
/// ([`mask_urls_in`]), then folded and bounded to [`MAX_MESSAGE_BYTES`] ([`bound_text`]).
/// Masking comes first, so that a cut never leaves the start of a password unmasked.
#[must_use]
pub fn message(text: &str) -> String {
    bound_text(&mask_urls_in(text), MAX_MESSAGE_BYTES).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_masked() {
        assert_eq!(
            mask_url("https://alice:s3cret@example.com/health?token=abc&x=1#frag"),
            "https://***@example.com/health?token=***&x=***"
        );
        assert_eq!(
            mask_url("https://alice@example.com/"),
            "https://***@example.com/"
        );
        assert_eq!(
            mask_url("http://example.com/a?b"),
            "http://example.com/a?b=***"
        );
        assert_eq!(mask_url("http://example.com/"), "http://example.com/");
        assert_eq!(mask_url("http://[::1]:8080/x"), "http://[::1]:8080/x");
    }

    #[test]
    fn masking_twice_changes_nothing_more() {
        let once = mask_url("https://u:pw@h.example/x?t=1&u=2");
        assert_eq!(mask_url(&once), once);
        assert_eq!(mask_urls_in(&once), once);
    }

    #[test]
    fn an_unparseable_url_keeps_only_its_start() {
        assert_eq!(mask_url("not a url?key=v"), "not a url?***");
        assert_eq!(mask_url("ftp://u:p@h/x?y#z"), "ftp://***@h/x?***");
        assert_eq!(mask_url("u:p@host/path"), "***@host/path");
        assert_eq!(mask_url("https://u:pw@"), "https://***@");
        assert_eq!(mask_url("https://u:pw@h:99999/"), "https://***@h:99999/");
        assert_eq!(
            mask_url("postgres://sitemon:pw@db/sitemon?sslmode=require"),
            "postgres://***@db/sitemon?***"
        );
    }

    #[test]
    fn every_url_of_a_message_is_masked() {
        assert_eq!(
            mask_urls_in(
                "no complete response from https://u:pw@host.example/h/ after \
                 http://a:b@first.example/?t=1"
            ),
            "no complete response from https://***@host.example/h/ after \
             http://***@first.example/?t=***"
        );
    }

    #[test]
    fn quotes_and_brackets_around_a_url_stay() {
        assert_eq!(
            mask_urls_in(r#"redirects to "https://u:pw@h.example/x?t=1""#),
            r#"redirects to "https://***@h.example/x?t=***""#
        );
        assert_eq!(
            mask_urls_in("redirects to 'https://u:pw@h.example/x?t=1'."),
            "redirects to 'https://***@h.example/x?t=***'."
        );
        assert_eq!(
            mask_urls_in("(see https://u:pw@h.example/x?t=1)"),
            "(see https://***@h.example/x?t=***)"
        );
        assert_eq!(
            mask_urls_in("[https://u:pw@h.example/]"),
            "[https://***@h.example/]"
        );
        assert_eq!(
            mask_urls_in("<https://u:pw@h.example/>"),
            "<https://***@h.example/>"
        );
        assert_eq!(
            mask_urls_in("at `https://u:pw@h.example/`"),
            "at `https://***@h.example/`"
        );
    }

    #[test]
    fn trailing_punctuation_is_not_part_of_the_url() {
        assert_eq!(
            mask_urls_in("failed: https://u:pw@h.example/x?t=1, then https://h.example/?k=v."),
            "failed: https://***@h.example/x?t=***, then https://h.example/?k=***."
        );
        assert_eq!(
            mask_urls_in("is it https://u:pw@h.example/?!"),
            "is it https://***@h.example/?!"
        );
    }

    #[test]
    fn balanced_parentheses_belong_to_the_url_and_a_password_may_hold_them() {
        assert_eq!(
            mask_urls_in("at https://h.example/wiki/A_(b) now"),
            "at https://h.example/wiki/A_(b) now"
        );
        let masked = mask_urls_in("to https://u:pa(ss@h.example/x");
        assert!(!masked.contains("pa(ss"), "{masked}");
        assert!(!masked.contains("ss@"), "{masked}");
        let masked = mask_urls_in("to (https://u:p)w@h.example/x)");
        assert!(!masked.contains("p)w"), "{masked}");
    }

    #[test]
    fn any_scheme_and_a_bare_authority_are_masked() {
        assert_eq!(
            mask_urls_in("redis://default:pw@cache:6379/0 down"),
            "redis://***@cache:6379/0 down"
        );
        assert_eq!(
            mask_urls_in("host ://user:pass@host.example/x"),
            "host ://***@host.example/x"
        );
        assert_eq!(
            mask_urls_in("x=https://u:pw@h.example/"),
            "x=https://***@h.example/"
        );
    }

    #[test]
    fn text_without_urls_is_borrowed_and_non_ascii_survives() {
        assert!(matches!(
            mask_urls_in("connection refused"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            mask_urls_in("échec: «https://u:pw@bücher.example/ü?ß=1» ☃"),
            "échec: «https://***@xn--bcher-kva.example/%C3%BC?%C3%9F=***» ☃"
        );
        assert_eq!(mask_urls_in("ünï ://"), "ünï ://");
    }

    #[test]
    fn a_huge_message_is_masked_in_linear_time() {
        // 300 KB of URL fragments and of one URL: a backtracking matcher would take hours.
        let many = "https://u:secret@h.example/x?t=1 (".repeat(9_000);
        let masked = mask_urls_in(&many);
        assert!(!masked.contains("secret"));
        let one = format!("https://u:secret@h.example/{}", "(a".repeat(150_000));
        assert!(!mask_urls_in(&one).contains("secret"));
        let colons = "://:".repeat(75_000);
        let _ = mask_urls_in(&colons);
        let location = format!(
            "redirects to \"https://u:secret@h.example/{}\"",
            "x".repeat(300_000)
        );
        let bounded = message(&location);
        assert!(!bounded.contains("secret"));
        assert!(bounded.len() <= MAX_MESSAGE_BYTES + 40, "{}", bounded.len());
    }

    #[test]
    fn bound_text_folds_and_cuts_on_a_char_boundary() {
        assert!(matches!(bound_text("one line", 1024), Cow::Borrowed(_)));
        assert_eq!(bound_text("  two\n\tlines  ", 1024), "two lines");
        assert_eq!(bound_text("a  b", 1024), "a b");
        assert_eq!(bound_text("", 1024), "");
        assert_eq!(bound_text("abcdef", 3), "abc… [cut, 6 bytes]");
        // "é" is two bytes: a cut in its middle moves before it.
        assert_eq!(bound_text("aé", 2), "a… [cut, 3 bytes]");
        let big = "x".repeat(300_000);
        let cut = bound_text(&big, MAX_MESSAGE_BYTES);
        assert!(cut.starts_with(&"x".repeat(MAX_MESSAGE_BYTES)));
        assert!(cut.ends_with("… [cut, 300000 bytes]"), "{}", &cut[1000..]);
    }

    #[test]
    fn message_masks_before_it_cuts() {
        let text = format!("{} https://u:secret@h.example/", "y".repeat(1015));
        let out = message(&text);
        assert!(!out.contains("secret"), "{out}");
        assert!(!out.contains("u:s"), "{out}");
    }
}
