//! The dashboard: server-rendered askama pages that work without JavaScript, their partials for
//! htmx, the server-sent event stream, and SVG charts.

pub mod charts;
pub mod pages;
