//! The dashboard: server-rendered askama pages that work without JavaScript, their partials for
//! htmx, the server-sent event stream, and SVG charts. `pages` holds every page and form;
//! below it `page` (what every page shares: `base.html`, `?partial=1`), `filters` (the helpers
//! templates call) and `charts` (SVG).

pub mod charts;
pub mod filters;
pub mod page;
pub mod pages;
