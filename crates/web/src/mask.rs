//! Site URLs as the dashboard shows them: masked by `sitemon_core::mask` unless
//! `--show-full-urls` is given, since a URL may carry a password or a token.

use sitemon_core::mask::{mask_url, mask_urls_in};

/// Shows URLs masked or whole, and masks every URL inside text (an error message may quote
/// the site's URL, a later hop or a `Location` header).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Urls {
    pub(crate) show_full: bool,
}

impl Urls {
    /// `url` as shown: masked unless `--show-full-urls`.
    pub(crate) fn show(self, url: &str) -> String {
        if self.show_full {
            url.to_owned()
        } else {
            mask_url(url)
        }
    }

    /// `text` with every URL it quotes masked, unless `--show-full-urls`.
    pub(crate) fn in_text(self, text: &str) -> String {
        if self.show_full {
            text.to_owned()
        } else {
            mask_urls_in(text).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Urls;

    #[test]
    fn every_url_of_a_text_is_masked_unless_shown_full() {
        let text = "no complete response from https://u:pw@host.example/h/";
        let masked = Urls { show_full: false };
        assert_eq!(
            masked.in_text(text),
            "no complete response from https://***@host.example/h/"
        );
        assert_eq!(Urls { show_full: true }.in_text(text), text);
        assert_eq!(
            masked.show("https://u:pw@h.example/?t=1"),
            "https://***@h.example/?t=***"
        );
    }
}
