//! The dashboard: server-rendered askama pages that work without JavaScript, their partials for
//! htmx, the server-sent event stream, and SVG charts. One module per page, each a full page
//! wrapping its `*_partial.html` (`overview`, `cluster`, `node`, `events`, `alerts` with its
//! forms, `switchover` preview, confirmation and progress, the `failover` forms, `login` and
//! logout, `audit`); below them `page` (what every page shares: `base.html`, `?partial=1`),
//! `filters` (the helpers templates call) and `charts` (SVG); `stream` is the event stream that
//! makes pages live, `assets` the stylesheet and script.

pub mod alerts;
pub mod assets;
pub mod audit;
pub mod charts;
pub mod cluster;
pub mod events;
pub mod failover;
pub mod filters;
pub mod login;
pub mod node;
pub mod overview;
pub mod page;
pub mod stream;
pub mod switchover;
