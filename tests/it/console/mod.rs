//! The admin console: its security headers, sessions and CSRF over plain HTTP
//! ([`headers`]), the bucketed usage query on both databases ([`buckets`]), and the console
//! itself in a real headless Chromium ([`browser`]).

mod browser;
mod buckets;
mod headers;
