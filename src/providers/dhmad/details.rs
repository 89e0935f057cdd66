//! What DHMAD says about a session beyond the common fields, as stored and as the schema
//! shows it (`DhmadSessionDetails`, a member of `ProviderDetails`).

use std::sync::Arc;

use async_graphql::{Enum, Object};

use crate::domain::{CheckoutSession, ProviderDetails};

/// Stored with each DHMAD session. The target user's email is the common `customerEmail`.
#[derive(Debug, PartialEq, Eq)]
pub struct DhmadDetails {
    /// The escrow this session belongs to.
    pub escrow_id: Option<Box<str>>,
    /// DHMAD's word for the action the person was asked to take.
    pub action: Option<Box<str>>,
}

impl ProviderDetails for DhmadDetails {
    fn heap_bytes(&self) -> usize {
        self.escrow_id.as_ref().map_or(0, |s| s.len()) + self.action.as_ref().map_or(0, |s| s.len())
    }

    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"escrowId": self.escrow_id, "action": self.action}))
    }
}

impl DhmadDetails {
    /// Reads back what [`ProviderDetails::to_json`] wrote.
    pub fn from_json(value: &serde_json::Value) -> Option<Box<dyn ProviderDetails>> {
        let text = |field: &str| value.get(field).and_then(serde_json::Value::as_str).map(Box::from);
        Some(Box::new(DhmadDetails { escrow_id: text("escrowId"), action: text("action") }))
    }
}

/// The action a DHMAD session asks the person to take.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhmadAction {
    SignContract,
    AcceptPay,
    Complete,
    Dispute,
    RequestCancellation,
    RejectCancellation,
    AcceptCancellation,
    CancelEscrow,
    SubmitProof,
    ReviewProof,
    /// A value this gateway does not know yet (see `rawAction`).
    Unknown,
}

impl DhmadAction {
    pub fn from_wire(raw: &str) -> Self {
        match raw {
            "sign_contract" => Self::SignContract,
            "accept_pay" => Self::AcceptPay,
            "complete" => Self::Complete,
            "dispute" => Self::Dispute,
            "request_cancellation" => Self::RequestCancellation,
            "reject_cancellation" => Self::RejectCancellation,
            "accept_cancellation" => Self::AcceptCancellation,
            "cancel_escrow" => Self::CancelEscrow,
            "submit_proof" => Self::SubmitProof,
            "review_proof" => Self::ReviewProof,
            _ => Self::Unknown,
        }
    }
}

/// What DHMAD says about a session beyond the common fields.
#[derive(Debug)]
pub struct DhmadSessionDetails(pub Arc<CheckoutSession>);

/// What DHMAD says about a session beyond the common fields.
#[Object]
impl DhmadSessionDetails {
    /// The escrow this session belongs to.
    async fn escrow_id(&self) -> Option<&str> {
        self.stored().and_then(|d| d.escrow_id.as_deref())
    }

    /// What the person was asked to do.
    async fn action(&self) -> DhmadAction {
        self.raw().map_or(DhmadAction::Unknown, DhmadAction::from_wire)
    }

    /// DHMAD's own word for the action (useful when `action` is `UNKNOWN`).
    async fn raw_action(&self) -> Option<&str> {
        self.raw()
    }

    /// Email of the user who was meant to act.
    async fn target_user_email(&self) -> Option<&str> {
        self.0.customer_email.as_deref()
    }
}

impl DhmadSessionDetails {
    fn stored(&self) -> Option<&DhmadDetails> {
        self.0.details::<DhmadDetails>()
    }

    fn raw(&self) -> Option<&str> {
        self.stored().and_then(|d| d.action.as_deref())
    }
}
