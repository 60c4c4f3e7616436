//! OData query options of `GET /api/machineactions`: `$filter`, `$top`, `$skip`.
//!
//! Other standard OData options are refused with a 400 `ODataError`; any other option starting
//! with `$` gets the non-standard body observed in microsoft-365-docs#12682 (empty `code`, a
//! `details` array). Options without `$` are custom options and ignored, as OData prescribes.

use super::error::ApiError;
use super::odata::Filter;

/// Maximum page size, and the page size when `$top` is absent.
pub(crate) const MAX_TOP: usize = 10_000;

/// Standard OData options the API does not allow here.
const NOT_ALLOWED: &[&str] = &[
    "$orderby",
    "$select",
    "$expand",
    "$count",
    "$search",
    "$format",
    "$skiptoken",
    "$apply",
    "$compute",
    "$levels",
    "$deltatoken",
    "$schemaversion",
];

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub(crate) filter: Option<Filter>,
    pub(crate) top: usize,
    pub(crate) skip: usize,
}

impl ListQuery {
    /// Parses the raw (still percent-encoded) query string.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let (mut filter, mut top, mut skip) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if !key.starts_with('$') {
                continue;
            }
            let name = key.to_ascii_lowercase();
            match name.as_str() {
                "$filter" => once(
                    &mut filter,
                    &key,
                    Filter::parse(&value).map_err(ApiError::OData)?,
                )?,
                "$top" => {
                    let n = count(&key, &value)?;
                    if n > MAX_TOP {
                        return Err(ApiError::OData(format!(
                            "The limit of '{MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{n}'."
                        )));
                    }
                    once(&mut top, &key, n)?;
                }
                "$skip" => once(&mut skip, &key, count(&key, &value)?)?,
                n if NOT_ALLOWED.contains(&n) => {
                    return Err(ApiError::OData(format!(
                        "Query option '{key}' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings."
                    )));
                }
                _ => return Err(ApiError::UnsupportedQueryOption(key.into_owned())),
            }
        }
        Ok(Self {
            filter,
            top: top.unwrap_or(MAX_TOP),
            skip: skip.unwrap_or(0),
        })
    }
}

fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::OData(format!(
            "Query option '{key}' was specified more than once, but it must be specified at most once."
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn count(key: &str, value: &str) -> Result<usize, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::OData(format!(
            "Invalid value '{value}' for {key} query option found. The {key} query option requires a non-negative integer value."
        ))
    })
}
