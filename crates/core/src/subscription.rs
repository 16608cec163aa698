//! Consent: a subscription per identity, its state, topics, and the proof that makes a
//! `subscribed` state legitimate.

use crate::ValidationError;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The state of a contact's consent on one channel identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Opted in: marketing may be sent (subject to topics, caps and quiet hours).
    Subscribed,
    /// Opted out, or never opted in: no marketing.
    Unsubscribed,
    /// The person blocked the channel account: nothing can be delivered.
    Blocked,
    /// Asked to subscribe, confirmation not yet received (double opt-in).
    PendingDoubleOptIn,
}

impl SubscriptionState {
    /// The stable name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Subscribed => "subscribed",
            SubscriptionState::Unsubscribed => "unsubscribed",
            SubscriptionState::Blocked => "blocked",
            SubscriptionState::PendingDoubleOptIn => "pending_double_opt_in",
        }
    }
}

impl std::str::FromStr for SubscriptionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "subscribed" => SubscriptionState::Subscribed,
            "unsubscribed" => SubscriptionState::Unsubscribed,
            "blocked" => SubscriptionState::Blocked,
            "pending_double_opt_in" => SubscriptionState::PendingDoubleOptIn,
            _ => {
                return Err(format!(
                    "unknown subscription state `{s}` (expected subscribed, unsubscribed, blocked or pending_double_opt_in)"
                ))
            }
        })
    }
}

/// Evidence of how and when consent (or its withdrawal) was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentProof {
    /// Where consent was collected: `telegram_start`, `landing:spring-sale`, `import:crm`.
    pub source: String,
    /// When it was given.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The text the person saw when agreeing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_shown: Option<String>,
    /// The IP address it came from (web forms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The provider message id that carried it (messenger opt-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl ConsentProof {
    /// Checks that the proof carries a source and a plausible time (not in the future),
    /// and that the IP, when given, parses.
    pub fn validated(self, now: Timestamp) -> Result<ConsentProof, ValidationError> {
        let source = self.source.trim().to_string();
        if source.is_empty() || source.chars().count() > 200 {
            return Err(ValidationError::new(
                "proof.source",
                "must be 1 to 200 characters",
            ));
        }
        if self.at > now + jiff::SignedDuration::from_mins(5) {
            return Err(ValidationError::new(
                "proof.at",
                "must not be in the future",
            ));
        }
        if let Some(ip) = &self.ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ValidationError::new(
                    "proof.ip",
                    format!("`{ip}` is not an IP address"),
                ));
            }
        }
        if let Some(t) = &self.text_shown {
            if t.chars().count() > 4000 {
                return Err(ValidationError::new(
                    "proof.text_shown",
                    "must be at most 4000 characters",
                ));
            }
        }
        Ok(ConsentProof { source, ..self })
    }
}

/// A requested change of consent, validated: `subscribed` always carries proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    state: SubscriptionState,
    topics: Vec<String>,
    proof: Option<ConsentProof>,
}

impl SubscriptionChange {
    /// Builds a change, refusing `subscribed` or `pending_double_opt_in` without proof —
    /// the rule that no one is marked as consenting without evidence.
    pub fn new(
        state: SubscriptionState,
        topics: Vec<String>,
        proof: Option<ConsentProof>,
        now: Timestamp,
    ) -> Result<Self, ValidationError> {
        let proof = proof.map(|p| p.validated(now)).transpose()?;
        if matches!(
            state,
            SubscriptionState::Subscribed | SubscriptionState::PendingDoubleOptIn
        ) && proof.is_none()
        {
            return Err(ValidationError::new(
                "proof",
                "a subscription needs proof of consent (source and time)",
            ));
        }
        let mut clean = Vec::with_capacity(topics.len());
        for t in topics {
            let t = t.trim().to_string();
            if t.is_empty() || t.len() > 64 {
                return Err(ValidationError::new(
                    "topics",
                    "each topic must be 1 to 64 characters",
                ));
            }
            if !clean.contains(&t) {
                clean.push(t);
            }
        }
        Ok(Self {
            state,
            topics: clean,
            proof,
        })
    }

    /// The new state.
    pub fn state(&self) -> SubscriptionState {
        self.state
    }

    /// The topics subscribed to (empty = all topics).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The proof, always present for `subscribed`.
    pub fn proof(&self) -> Option<&ConsentProof> {
        self.proof.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribed_requires_proof() {
        let now = Timestamp::now();
        let e = SubscriptionChange::new(SubscriptionState::Subscribed, vec![], None, now)
            .expect_err("no proof");
        assert_eq!(e.field, "proof");
        assert!(
            SubscriptionChange::new(SubscriptionState::Unsubscribed, vec![], None, now).is_ok()
        );
        let proof = ConsentProof {
            source: "landing".into(),
            at: now,
            text_shown: None,
            ip: Some("not-an-ip".into()),
            message_id: None,
        };
        let e = SubscriptionChange::new(SubscriptionState::Subscribed, vec![], Some(proof), now)
            .expect_err("ip");
        assert_eq!(e.field, "proof.ip");
    }
}
