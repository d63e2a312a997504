//! Versioned JSON encoding of records: `{"schema":1,"record":{...}}`.
//!
//! The schema number lets a newer build change a record's shape: an older reader
//! refuses values it does not understand (and list/watch skip them) instead of
//! misreading them.

use serde::{Deserialize, Serialize};

use crate::error::NsdbError;
use crate::keys::{self, Kind};
use crate::records::*;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a, R> {
    schema: u64,
    record: &'a R,
}

/// Encodes a record with its schema version.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, NsdbError> {
    serde_json::to_vec(&EnvelopeOut {
        schema: SCHEMA_VERSION,
        record,
    })
    .map_err(|source| NsdbError::Encode {
        key: record.key(),
        source,
    })
}

/// First pass: the schema number only (other fields are skipped without being built),
/// so a value from another schema is reported as such whatever its shape.
#[derive(Deserialize)]
struct SchemaPeek {
    schema: u64,
}

/// Second pass: the record, typed, once the schema is known to be ours.
#[derive(Deserialize)]
#[serde(bound = "R: serde::de::DeserializeOwned")]
struct EnvelopeIn<R> {
    #[allow(dead_code)]
    schema: u64,
    record: R,
}

fn corrupt(key: &str, e: serde_json::Error) -> NsdbError {
    NsdbError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// Decodes the value stored at `key` as a record of type `R`, checking that the
/// record's own id matches the key it is stored under.
pub fn decode<R: Record>(key: &str, value: &[u8]) -> Result<R, NsdbError> {
    let peek: SchemaPeek = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
    if peek.schema != SCHEMA_VERSION {
        return Err(NsdbError::UnsupportedSchema {
            key: key.to_owned(),
            version: peek.schema,
            supported: SCHEMA_VERSION,
        });
    }
    let env: EnvelopeIn<R> = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
    let record = env.record;
    if record.key() != key {
        return Err(NsdbError::Corrupt {
            key: key.to_owned(),
            reason: format!("record id {:?} does not match its key", record.id()),
        });
    }
    Ok(record)
}

/// Decodes any record, taking its kind from the key.
pub fn decode_any(key: &str, value: &[u8]) -> Result<AnyRecord, NsdbError> {
    let (kind, _) = keys::parse(key)?;
    Ok(match kind {
        Kind::Host => decode::<Host>(key, value)?.into_any(),
        Kind::Bridge => decode::<Bridge>(key, value)?.into_any(),
        Kind::Router => decode::<Router>(key, value)?.into_any(),
        Kind::Port => decode::<Port>(key, value)?.into_any(),
        Kind::Route => decode::<Route>(key, value)?.into_any(),
        Kind::Chain => decode::<Chain>(key, value)?.into_any(),
        Kind::LoadBalancer => decode::<LoadBalancer>(key, value)?.into_any(),
        Kind::PortBinding => decode::<PortBinding>(key, value)?.into_any(),
        Kind::IpLease => decode::<IpLease>(key, value)?.into_any(),
        Kind::TunnelKey => decode::<TunnelKeyAlloc>(key, value)?.into_any(),
        Kind::MemberHealth => decode::<MemberHealth>(key, value)?.into_any(),
    })
}

/// Encodes any record with its schema version.
pub fn encode_any(record: &AnyRecord) -> Result<Vec<u8>, NsdbError> {
    match record {
        AnyRecord::Host(r) => encode(r),
        AnyRecord::Bridge(r) => encode(r),
        AnyRecord::Router(r) => encode(r),
        AnyRecord::Port(r) => encode(r),
        AnyRecord::Route(r) => encode(r),
        AnyRecord::Chain(r) => encode(r),
        AnyRecord::LoadBalancer(r) => encode(r),
        AnyRecord::PortBinding(r) => encode(r),
        AnyRecord::IpLease(r) => encode(r),
        AnyRecord::TunnelKey(r) => encode(r),
        AnyRecord::MemberHealth(r) => encode(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_round_trips_through_the_envelope() {
        for r in crate::records::tests::samples() {
            let bytes = encode_any(&r).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["schema"], 1);
            assert_eq!(decode_any(&r.key(), &bytes).unwrap(), r);
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let key = "/weft/v1/hosts/h1";
        let err = decode_any(key, b"\xff\x00garbage").unwrap_err();
        assert!(matches!(err, NsdbError::Corrupt { ref key, .. } if key == "/weft/v1/hosts/h1"));
        let err = decode_any(key, br#"{"schema":2,"record":{}}"#).unwrap_err();
        assert!(matches!(
            err,
            NsdbError::UnsupportedSchema { version: 2, .. }
        ));
        let err = decode_any(key, br#"{"schema":3,"spec":[1,2]}"#).unwrap_err();
        assert!(matches!(
            err,
            NsdbError::UnsupportedSchema { version: 3, .. }
        ));
        let err = decode_any(key, br#"{"schema":1,"record":{"id":"h1"}}"#).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        // A record stored under another record's key is refused.
        let h = Host {
            id: "h2".into(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            tunnel: TunnelType::Vxlan,
            tunnel_udp_port: 4789,
            mtu: 1500,
        };
        let err = decode::<Host>(key, &encode(&h).unwrap()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(matches!(
            decode_any("/weft/v1/unknown/x", b"{}").unwrap_err(),
            NsdbError::InvalidKey { .. }
        ));
    }
}
