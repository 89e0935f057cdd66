//! What Dodo Payments says about a session beyond the common fields, as the schema shows it
//! (`DodoSessionDetails`, a member of `ProviderDetails`). Nothing extra is stored: the
//! payment id and status are common fields already.

use std::sync::Arc;

use async_graphql::resolver_utils::EnumType;
use async_graphql::{Enum, Object};

use super::PAYMENT_STATUSES;
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
    /// The value for a documented `payment_status` (the one table of them is the provider
    /// module's), `UNKNOWN` for any other. Each value's name is Dodo's word in upper case.
    pub fn from_wire(raw: &str) -> Self {
        if !PAYMENT_STATUSES.iter().any(|(documented, _)| *documented == raw) {
            return Self::Unknown;
        }
        Self::items()
            .iter()
            .find(|item| item.name.eq_ignore_ascii_case(raw))
            .map_or(Self::Unknown, |item| item.value)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's values and the documented statuses are one list: each documented status
    /// has its own value, and each value but `UNKNOWN` is a documented status.
    #[test]
    fn every_documented_status_has_its_own_value() {
        let named: Vec<DodoPaymentStatus> =
            PAYMENT_STATUSES.iter().map(|(raw, _)| DodoPaymentStatus::from_wire(raw)).collect();
        assert!(!named.contains(&DodoPaymentStatus::Unknown), "{named:?}");
        assert_eq!(named.len() + 1, DodoPaymentStatus::items().len(), "{named:?}");
        assert_eq!(DodoPaymentStatus::from_wire("unknown"), DodoPaymentStatus::Unknown);
        assert_eq!(DodoPaymentStatus::from_wire("SUCCEEDED"), DodoPaymentStatus::Unknown);
    }
}
