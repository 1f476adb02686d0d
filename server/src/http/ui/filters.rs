//! Helpers the templates call: askama looks a custom filter up as `filters::name` where the
//! template's struct is declared, so each page module whose templates use one imports this
//! module by name (`use crate::http::ui::filters;`).

use chrono::{DateTime, Utc};

use crate::http::ui::charts::{format_value, Unit};

/// A byte count for people (`1.5 MiB`); `—` when absent.
pub fn bytes(value: &Option<u64>, _: &dyn askama::Values) -> askama::Result<String> {
    Ok(value.map_or("—".into(), |v| format_value(v as f64, Unit::Bytes)))
}

/// Seconds as `3d 4h`, `2h 5m`, `4m 10s` or `12.3s`.
pub fn duration(value: &f64, _: &dyn askama::Values) -> askama::Result<String> {
    let s = value.max(0.0);
    let whole = s as u64;
    Ok(match whole {
        0..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m {}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h {}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d {}h", whole / 86_400, whole % 86_400 / 3600),
    })
}

/// Seconds for people (`250 ms`); `—` when absent.
pub fn seconds(value: &Option<f64>, _: &dyn askama::Values) -> askama::Result<String> {
    Ok(value.map_or("—".into(), |v| format_value(v, Unit::Seconds)))
}

/// `1.2 s`, `3 min`, `2 h` since `then`.
pub fn age(
    then: &DateTime<Utc>,
    _: &dyn askama::Values,
    now: &DateTime<Utc>,
) -> askama::Result<String> {
    let ms = (*now - *then).num_milliseconds().max(0);
    Ok(if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if ms < 7_200_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} h", ms / 3_600_000)
    })
}
