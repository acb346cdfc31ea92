//! The one mapping between the vocabulary a request is written in (the `alerts` columns':
//! `Resolved`, `TruePositive`, `CompromisedUser`, …) and each API's own spelling. A request may
//! also use an API's spelling (either Graph page's determination names); [`normalize`] turns it
//! into the stored name, and [`wire`] into what an API accepts.

use crate::source::SourceKind;

/// A field a request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Status,
    Classification,
    Determination,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Classification => "classification",
            Self::Determination => "determination",
        }
    }
}

/// `(field, stored and MDE name, Graph alert name, Graph incident name)`.
///
/// The Graph alert resource and some incident pages spell three determinations differently
/// (graph-incidents.md, "Write-back"): both are accepted on the way in, and each target gets its
/// own page's spelling.
pub const TABLE: &[(Field, &str, &str, &str)] = &[
    (Field::Status, "New", "new", "active"),
    (Field::Status, "InProgress", "inProgress", "inProgress"),
    (Field::Status, "Resolved", "resolved", "resolved"),
    (
        Field::Classification,
        "TruePositive",
        "truePositive",
        "truePositive",
    ),
    (
        Field::Classification,
        "FalsePositive",
        "falsePositive",
        "falsePositive",
    ),
    (
        Field::Classification,
        "InformationalExpectedActivity",
        "informationalExpectedActivity",
        "informationalExpectedActivity",
    ),
    (
        Field::Determination,
        "MultiStagedAttack",
        "multiStagedAttack",
        "multiStagedAttack",
    ),
    (
        Field::Determination,
        "MaliciousUserActivity",
        "maliciousUserActivity",
        "maliciousUserActivity",
    ),
    (
        Field::Determination,
        "CompromisedUser",
        "compromisedAccount",
        "compromisedUser",
    ),
    (Field::Determination, "Malware", "malware", "malware"),
    (Field::Determination, "Phishing", "phishing", "phishing"),
    (
        Field::Determination,
        "UnwantedSoftware",
        "unwantedSoftware",
        "unwantedSoftware",
    ),
    (
        Field::Determination,
        "SecurityTesting",
        "securityTesting",
        "securityTesting",
    ),
    (
        Field::Determination,
        "LineOfBusinessApplication",
        "lineOfBusinessApplication",
        "lineOfBusinessApplication",
    ),
    (
        Field::Determination,
        "ConfirmedUserActivity",
        "confirmedActivity",
        "confirmedActivity",
    ),
    (Field::Determination, "Clean", "notMalicious", "clean"),
    (
        Field::Determination,
        "InsufficientData",
        "notEnoughDataToValidate",
        "insufficientData",
    ),
    (Field::Determination, "Other", "other", "other"),
];

/// The stored name for `text`, written in any of the table's spellings (case-insensitively), or
/// an error listing the accepted values.
pub fn normalize(field: Field, text: &str) -> Result<&'static str, String> {
    TABLE
        .iter()
        .filter(|r| r.0 == field)
        .find(|r| {
            [r.1, r.2, r.3]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(text.trim()))
        })
        .map(|r| r.1)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a {}: use one of {}",
                field.name(),
                accepted(field).join(", ")
            )
        })
}

/// The stored names of `field`, in the table's order.
pub fn accepted(field: Field) -> Vec<&'static str> {
    TABLE.iter().filter(|r| r.0 == field).map(|r| r.1).collect()
}

/// What Graph's incident resource accepts for the stored name `stored` (already normalized): its
/// own status members (`active` for `New`), and for classification and determination the
/// `alertClassification` and `alertDetermination` members its schema types them with
/// (`compromisedAccount`, `notMalicious`), whatever spelling some incident pages show.
pub fn wire_incident(field: Field, stored: &str) -> Option<&'static str> {
    let row = TABLE.iter().find(|r| r.0 == field && r.1 == stored)?;
    Some(match field {
        Field::Status => row.3,
        Field::Classification | Field::Determination => row.2,
    })
}

/// What `source`'s alert API accepts for the stored name `stored` (already normalized).
pub fn wire(field: Field, stored: &str, source: SourceKind) -> Option<&'static str> {
    let row = TABLE.iter().find(|r| r.0 == field && r.1 == stored)?;
    Some(match source {
        SourceKind::Mde => row.1,
        SourceKind::Graph => row.2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_graph_spellings_and_the_stored_one_mean_the_same_determination() {
        for text in [
            "CompromisedUser",
            "compromisedAccount",
            "compromisedUser",
            "compromiseduser",
        ] {
            assert_eq!(normalize(Field::Determination, text), Ok("CompromisedUser"));
        }
        for text in ["Clean", "notMalicious", "clean"] {
            assert_eq!(normalize(Field::Determination, text), Ok("Clean"));
        }
        for text in [
            "InsufficientData",
            "notEnoughDataToValidate",
            "insufficientData",
        ] {
            assert_eq!(
                normalize(Field::Determination, text),
                Ok("InsufficientData")
            );
        }
        assert_eq!(
            wire(Field::Determination, "CompromisedUser", SourceKind::Graph),
            Some("compromisedAccount")
        );
        assert_eq!(
            wire(Field::Determination, "CompromisedUser", SourceKind::Mde),
            Some("CompromisedUser")
        );
        assert_eq!(
            wire(Field::Status, "InProgress", SourceKind::Graph),
            Some("inProgress")
        );
    }

    #[test]
    fn an_unknown_value_is_refused_with_the_accepted_ones() {
        let e = normalize(Field::Status, "Closed").unwrap_err();
        assert!(e.contains("New, InProgress, Resolved"), "{e}");
        assert!(normalize(Field::Classification, "Malware").is_err());
    }

    #[test]
    fn every_graph_alert_spelling_reads_back_as_its_stored_name() {
        // the read side (graph::model) and this table agree on every determination and status
        for (field, stored, graph, _) in TABLE {
            let back = match field {
                Field::Status => Some(crate::graph::model::pascal(graph)),
                Field::Classification => crate::graph::model::classification(graph),
                Field::Determination => crate::graph::model::determination(graph),
            };
            assert_eq!(back.as_deref(), Some(*stored), "{graph}");
        }
    }
}
