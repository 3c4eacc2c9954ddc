//! The frame every page shares (head, header, footer), and the page of a failed request: a
//! leaf that the pages and the errors both draw with.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

/// Seconds between two refreshes of a page (by the script; without it, by hand).
pub(crate) const REFRESH_SECS: u32 = 10;

/// The frame of every page.
pub(crate) fn layout(title: &str, logout: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sitemon" }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/sitemon.css";
                script src="/assets/sitemon.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { span.dot {} "sitemon" }
                    @if logout {
                        form.logout method="post" action="/logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main data-refresh=(REFRESH_SECS) { (body) }
                footer { "sitemon " (sitemon_core::VERSION) " · refreshed every " (REFRESH_SECS) " s" }
            }
        }
    }
}

/// The page of a failed request.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        false,
        html! {
            section.error {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p { (message) }
                p { a href="/" { "Back to the overview" } }
            }
        },
    )
}
