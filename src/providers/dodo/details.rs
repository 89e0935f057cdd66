//! What Dodo Payments says about a session beyond the common fields, as the schema shows it
//! (`DodoSessionDetails`, a member of `ProviderDetails`). Nothing extra is stored: the
//! payment id and status are common fields already.

use std::sync::Arc;

use async_graphql::{Enum, Object};

use crate::domain::CheckoutSession;

/// Dodo's `IntentStatus`, plus `UNKNOWN` for values added after this gateway was built.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DodoPaymentStatus {
    Succeeded,
    Failed,
    Cancelled,
    Processing,
    RequiresCustomerAction,
    RequiresMerchantAction,
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresCapture,
    PartiallyCaptured,
    PartiallyCapturedAndCapturable,
    Unknown,
}

impl DodoPaymentStatus {
    pub fn from_wire(raw: &str) -> Self {
        match raw {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "processing" => Self::Processing,
            "requires_customer_action" => Self::RequiresCustomerAction,
            "requires_merchant_action" => Self::RequiresMerchantAction,
            "requires_payment_method" => Self::RequiresPaymentMethod,
            "requires_confirmation" => Self::RequiresConfirmation,
            "requires_capture" => Self::RequiresCapture,
            "partially_captured" => Self::PartiallyCaptured,
            "partially_captured_and_capturable" => Self::PartiallyCapturedAndCapturable,
            _ => Self::Unknown,
        }
    }
}

/// What Dodo Payments says about a session beyond the common fields.
#[derive(Debug)]
pub struct DodoSessionDetails(pub Arc<CheckoutSession>);

/// What Dodo Payments says about a session beyond the common fields.
#[Object]
impl DodoSessionDetails {
    /// The payment created by the session; null while the customer is still entering details.
    async fn payment_id(&self) -> Option<&str> {
        self.0.payment_id.as_deref()
    }

    /// The payment's status; null while there is no payment. `UNKNOWN` keeps new values (the
    /// raw value is in `CheckoutSession.providerStatus`).
    async fn payment_status(&self) -> Option<DodoPaymentStatus> {
        self.0.provider_status.as_deref().map(DodoPaymentStatus::from_wire)
    }
}
