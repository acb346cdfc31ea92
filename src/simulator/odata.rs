//! The slice of OData that `/api/alerts` needs: `$top`, `$skip`, `$expand=evidence`, and `$filter`
//! on `lastUpdateTime` and `alertCreationTime` (which may be compared with `null`). Anything outside that slice is refused with a message naming the problem,
//! so a client that depends on something the simulator does not model fails loudly instead of
//! silently getting unfiltered data.

use crate::timestamp::Timestamp;

/// The documented page-size limit.
pub(crate) const MAX_TOP: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            _ => return None,
        })
    }

    pub(crate) fn holds(self, left: Timestamp, right: Timestamp) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub top: usize,
    pub skip: usize,
    pub expand_evidence: bool,
    /// Conjunction of `lastUpdateTime <op> <literal>` and `alertCreationTime <op> <literal>`.
    pub filter: Filter,
}

impl Query {
    pub fn matches(&self, last_update: Timestamp, created: Option<Timestamp>) -> bool {
        self.filter.matches(last_update, created)
    }
}

/// Parses the raw query string (still percent-encoded; `+` means space).
pub(crate) fn parse_query(raw: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        top: MAX_TOP,
        skip: 0,
        expand_evidence: false,
        filter: Filter::default(),
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !key.starts_with('$') {
            // plain parameters are not OData options; the service ignores them
            continue;
        }
        if seen.iter().any(|k| *k == key) {
            return Err(format!(
                "Query option '{key}' was specified more than once, but it must be specified at most once."
            ));
        }
        seen.push(key.to_string());
        match &*key {
            "$top" => {
                let top = parse_count("$top", &value)?;
                if top > MAX_TOP {
                    return Err(format!(
                        "The limit of '{MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{top}'."
                    ));
                }
                q.top = top;
            }
            "$skip" => q.skip = parse_count("$skip", &value)?,
            "$expand" => {
                if value.trim() != "evidence" {
                    return Err(format!(
                        "Invalid $expand '{value}': the only expandable property of Alert is 'evidence'."
                    ));
                }
                q.expand_evidence = true;
            }
            "$filter" => q.filter = parse_filter(&value)?,
            other => {
                return Err(format!(
                    "The query parameter '{other}' is not supported by this endpoint."
                ));
            }
        }
    }
    Ok(q)
}

pub(crate) fn parse_count(name: &str, value: &str) -> Result<usize, String> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "Invalid value '{value}' for {name} query option found. The {name} query option requires a non-negative integer value."
        ));
    }
    value
        .parse()
        .map_err(|_| format!("The value '{value}' of {name} is too large."))
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    parse_filter_on(text, ["lastUpdateTime", "alertCreationTime"], false)
}

/// A parsed `$filter`: comparisons of the last-update time, of the creation time (`None`: the
/// `null` literal), and the `serviceSource` it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub time: Vec<(Op, Timestamp)>,
    pub created: Vec<(Op, Option<Timestamp>)>,
    pub service_source: Option<String>,
}

impl Filter {
    /// OData's semantics: `eq null` and `ne null` test for a value; any other comparison with a
    /// missing value is false.
    pub fn matches(&self, last_update: Timestamp, created: Option<Timestamp>) -> bool {
        self.time
            .iter()
            .all(|&(op, lit)| op.holds(last_update, lit))
            && self.created.iter().all(|&(op, lit)| match (created, lit) {
                (Some(c), Some(lit)) => op.holds(c, lit),
                (c, None) => (op == Op::Eq) == c.is_none(),
                (None, Some(_)) => false,
            })
    }
}

/// A conjunction of `<time field> <op> <DateTimeOffset>` terms on `fields` (the last-update
/// time, then the creation time, which may also be compared `eq`/`ne` with `null`) and, when
/// `service` is allowed (Graph), one `serviceSource eq '<value>'` term.
pub(crate) fn parse_filter_on(
    text: &str,
    fields: [&str; 2],
    service: bool,
) -> Result<Filter, String> {
    let [time_field, created_field] = fields;
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.is_empty() {
        return Err("The $filter expression is empty.".to_owned());
    }
    let mut out = Filter::default();
    let mut i = 0;
    loop {
        let Some(&field) = tokens.get(i) else {
            return Err(format!(
                "Syntax error at the end of '{text}': expected a comparison after 'and'."
            ));
        };
        if field.starts_with('(') || field.contains("(") {
            return Err(format!(
                "Unsupported expression '{field}' in $filter: the simulator accepts only 'lastUpdateTime <op> <DateTimeOffset>' joined by 'and'."
            ));
        }
        if service && field == "serviceSource" {
            let (Some(&"eq"), Some(lit)) = (tokens.get(i + 1), tokens.get(i + 2)) else {
                return Err(format!(
                    "Syntax error in '{text}': expected serviceSource eq '<value>'."
                ));
            };
            out.service_source = Some(lit.trim_matches('\'').to_owned());
            match tokens.get(i + 3) {
                None => return Ok(out),
                Some(&"and") => {
                    i += 4;
                    continue;
                }
                Some(other) => {
                    return Err(format!(
                        "Syntax error: unexpected '{other}' after '{lit}' in '{text}'."
                    ));
                }
            }
        }
        if field != time_field && field != created_field {
            return Err(format!(
                "Unsupported property '{field}' in $filter: the simulator filters only on '{time_field}' and '{created_field}'."
            ));
        }
        let Some(op_text) = tokens.get(i + 1) else {
            return Err(format!(
                "Syntax error at position {}: expected an operator after 'lastUpdateTime' in '{text}'.",
                text.len()
            ));
        };
        let op = Op::parse(op_text).ok_or_else(|| {
            format!(
                "Unsupported operator '{op_text}' in $filter: use one of eq, ne, gt, ge, lt, le."
            )
        })?;
        let Some(lit) = tokens.get(i + 2) else {
            return Err(format!(
                "Syntax error: expected a DateTimeOffset literal after '{op_text}' in '{text}'."
            ));
        };
        if field == time_field {
            out.time.push((op, parse_literal(lit, op_text)?));
        } else if *lit == "null" {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(format!(
                    "Operator '{op_text}' cannot compare '{field}' with null: use eq or ne."
                ));
            }
            out.created.push((op, None));
        } else {
            out.created.push((op, Some(parse_literal(lit, op_text)?)));
        }
        match tokens.get(i + 3) {
            None => return Ok(out),
            Some(&"and") => i += 4,
            Some(&"or") => {
                return Err(
                    "Unsupported operator 'or' in $filter: the simulator accepts only conjunctions ('and')."
                        .to_owned(),
                );
            }
            Some(other) => {
                return Err(format!(
                    "Syntax error: unexpected '{other}' after '{lit}' in '{text}'."
                ));
            }
        }
    }
}

fn parse_literal(lit: &str, op: &str) -> Result<Timestamp, String> {
    if lit.starts_with('\'') {
        return Err(format!(
            "A binary operator with incompatible types was detected. Found operand types 'Edm.DateTimeOffset' and 'Edm.String' for operator kind '{op}'."
        ));
    }
    let invalid = || format!("'{lit}' is not a valid DateTimeOffset literal.");
    // .NET's DateTimeOffset resolves 100 ns, so an eighth digit cannot be represented
    if let Some(dot) = lit.find('.') {
        let digits = lit[dot + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits > 7 {
            return Err(format!(
                "'{lit}' has {digits} fractional digits; DateTimeOffset allows at most 7."
            ));
        }
    }
    Timestamp::parse(lit).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn defaults_without_options() {
        let q = parse_query(None).unwrap();
        assert_eq!((q.top, q.skip, q.expand_evidence), (MAX_TOP, 0, false));
        assert_eq!(q.filter, Filter::default());
    }

    #[test]
    fn plus_and_percent_twenty_and_encoded_dollar_all_decode() {
        let a = parse_query(Some(
            "$filter=lastUpdateTime+ge+2021-01-26T20:33:59.2Z+and+lastUpdateTime+lt+2021-01-27T00:00:00Z&$top=5",
        ))
        .unwrap();
        let b = parse_query(Some(
            "%24filter=lastUpdateTime%20ge%202021-01-26T20%3A33%3A59.2Z%20and%20lastUpdateTime%20lt%202021-01-27T00:00:00Z&%24top=5",
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.filter.time,
            vec![
                (Op::Ge, ts("2021-01-26T20:33:59.2Z")),
                (Op::Lt, ts("2021-01-27T00:00:00Z"))
            ]
        );
        assert_eq!(a.top, 5);
    }

    #[test]
    fn compares_instants_not_strings() {
        let q = parse_query(Some("$filter=lastUpdateTime gt 2021-01-26T20:33:59.13Z")).unwrap();
        assert!(q.matches(ts("2021-01-26T20:33:59.2Z"), None));
        assert!(!q.matches(ts("2021-01-26T20:33:59.1Z"), None));
    }

    #[test]
    fn the_creation_time_filters_too_and_null_is_tested_with_eq_or_ne() {
        let t = ts("2021-01-26T20:33:59.2Z");
        let c = Some(ts("2021-01-26T20:00:00Z"));
        let q = |f: &str| {
            parse_query(Some(&format!(
                "$filter=lastUpdateTime ge {} and {f}",
                t.odata()
            )))
            .unwrap()
        };
        assert!(q("alertCreationTime lt 2021-01-26T21:00:00Z").matches(t, c));
        assert!(!q("alertCreationTime ge 2021-01-26T21:00:00Z").matches(t, c));
        assert!(
            !q("alertCreationTime lt 2021-01-26T21:00:00Z").matches(t, None),
            "a missing value compares false"
        );
        assert!(q("alertCreationTime eq null").matches(t, None));
        assert!(!q("alertCreationTime eq null").matches(t, c));
        assert!(q("alertCreationTime ne null").matches(t, c));
        assert!(parse_query(Some("$filter=alertCreationTime gt null")).is_err());
    }

    #[test]
    fn refuses_what_it_does_not_model() {
        for bad in [
            "$top=10001",
            "$top=-1",
            "$skip=x",
            "$expand=machine",
            "$orderby=lastUpdateTime",
            "$filter=",
            "$filter=status eq 'New'",
            "$filter=lastUpdateTime ge '2021-01-26T20:33:59Z'",
            "$filter=lastUpdateTime ge 2021-01-26T20:33:59.12345678Z",
            "$filter=lastUpdateTime ge 2021-01-26",
            "$filter=lastUpdateTime ge 2021-01-26T20:33:59Z or lastUpdateTime lt 2021-01-26T20:33:59Z",
            "$filter=lastUpdateTime ge 2021-01-26T20:33:59Z and",
            "$filter=lastUpdateTime foo 2021-01-26T20:33:59Z",
            "$top=1&$top=2",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_query(Some("$top=0")).unwrap().top, 0);
    }
}
