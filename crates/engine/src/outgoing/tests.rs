use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn classifies_special_purpose_addresses() {
    let cases = [
        ("10.1.2.3", AddressClass::Private),
        ("172.16.0.1", AddressClass::Private),
        ("172.31.255.255", AddressClass::Private),
        ("192.168.1.1", AddressClass::Private),
        ("169.254.169.254", AddressClass::LinkLocal),
        ("127.0.0.1", AddressClass::Loopback),
        ("127.8.9.10", AddressClass::Loopback),
        ("::1", AddressClass::Loopback),
        ("fe80::1", AddressClass::LinkLocal),
        ("fd12:3456::1", AddressClass::Private),
        ("fc00::1", AddressClass::Private),
        ("::ffff:127.0.0.1", AddressClass::Loopback),
        ("::ffff:10.0.0.1", AddressClass::Private),
        ("::ffff:169.254.169.254", AddressClass::LinkLocal),
        ("100.64.0.1", AddressClass::CarrierGradeNat),
        ("100.127.255.254", AddressClass::CarrierGradeNat),
        ("0.0.0.0", AddressClass::Unspecified),
        ("::", AddressClass::Unspecified),
        ("0.1.2.3", AddressClass::Reserved),
        ("255.255.255.255", AddressClass::Broadcast),
        ("224.0.0.1", AddressClass::Multicast),
        ("ff02::1", AddressClass::Multicast),
        ("240.0.0.1", AddressClass::Reserved),
        ("192.0.2.10", AddressClass::Documentation),
        ("2001:db8::1", AddressClass::Documentation),
        ("198.18.0.1", AddressClass::Benchmarking),
        ("64:ff9b::7f00:1", AddressClass::Loopback),
        ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
        ("2002:7f00:1::1", AddressClass::Loopback),
        ("2002:c0a8:101::1", AddressClass::Private),
        ("2001::1", AddressClass::Reserved),
        ("::127.0.0.1", AddressClass::Reserved),
        ("100::1", AddressClass::Reserved),
        ("93.184.216.34", AddressClass::Public),
        ("8.8.8.8", AddressClass::Public),
        ("172.32.0.1", AddressClass::Public),
        ("100.128.0.1", AddressClass::Public),
        ("2606:2800:220:1:248:1893:25c8:1946", AddressClass::Public),
        ("64:ff9b::808:808", AddressClass::Public),
    ];
    for (addr, expected) in cases {
        assert_eq!(classify(ip(addr)), expected, "{addr}");
    }
}

#[test]
fn parses_allow_list_entries() {
    let rules = OutgoingPolicy::parse_allow(
        " 127.0.0.1, 10.0.0.0/8 ::1,[::1]:8080, 192.168.1.0/24:443 , [fd00::/8]:9000,,",
    )
    .expect("valid list");
    let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "127.0.0.1",
            "10.0.0.0/8",
            "::1",
            "[::1]:8080",
            "192.168.1.0/24:443",
            "[fd00::/8]:9000"
        ]
    );
    assert_eq!(rules[0].port, None);
    assert_eq!(rules[3].port, Some(8080));
    assert_eq!(OutgoingPolicy::parse_allow("").expect("empty"), vec![]);
}

#[test]
fn allow_list_masks_host_bits_and_maps_ipv4_in_ipv6() {
    let rule = AllowRule::from_str("10.1.2.3/8").expect("valid");
    assert_eq!(rule.network.addr(), ip("10.0.0.0"));
    assert_eq!(rule.network.prefix_len(), 8);

    let mapped = AllowRule::from_str("::ffff:127.0.0.1").expect("valid");
    assert_eq!(mapped.network, IpNetwork::host(ip("127.0.0.1")));
    assert!(mapped.permits(ip("127.0.0.1"), 80));
    let plain = AllowRule::from_str("127.0.0.1").expect("valid");
    assert!(plain.permits(ip("::ffff:127.0.0.1"), 80));
}

#[test]
fn rejects_invalid_allow_list_entries() {
    for bad in [
        "localhost",
        "localhost:8080",
        "example.com",
        "10.0.0.0/33",
        "::1/129",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:http",
        "[::1",
        "[::1]8080",
        "10.0.0",
        "*",
    ] {
        let err = OutgoingPolicy::parse_allow(&format!("127.0.0.1, {bad}"))
            .expect_err(bad)
            .to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
    // The example setting from the documentation names a host, which is refused.
    let err = OutgoingPolicy::parse_allow("127.0.0.1, 10.0.0.0/8, ::1, localhost:8080")
        .expect_err("host names are not entries");
    assert!(err.contains("host names are not accepted"), "{err}");
}

#[test]
fn networks_contain_their_addresses_only() {
    let net = IpNetwork::new(ip("172.16.0.0"), 12).expect("valid");
    assert!(net.contains(ip("172.31.1.1")));
    assert!(!net.contains(ip("172.32.0.0")));
    assert!(net.contains(ip("::ffff:172.20.0.1")));
    assert!(!net.contains(ip("fd00::1")));

    let v6 = IpNetwork::new(ip("fd00::"), 8).expect("valid");
    assert!(v6.contains(ip("fd12::1")));
    assert!(!v6.contains(ip("fe80::1")));
    assert!(!v6.contains(ip("10.0.0.1")));

    let all = IpNetwork::new(ip("0.0.0.0"), 0).expect("valid");
    assert!(all.contains(ip("203.0.113.1")));
    assert!(IpNetwork::new(ip("10.0.0.0"), 33).is_none());
}

#[test]
fn policy_check_applies_rules_and_ports() {
    let policy = OutgoingPolicy {
        allow: OutgoingPolicy::parse_allow("127.0.0.1:8080, 10.0.0.0/8").expect("valid"),
        ..OutgoingPolicy::default()
    };
    assert_eq!(policy.check(ip("127.0.0.1"), 8080), Ok(()));
    assert_eq!(
        policy.check(ip("127.0.0.1"), 8081),
        Err(AddressClass::Loopback)
    );
    assert_eq!(policy.check(ip("10.9.8.7"), 22), Ok(()));
    assert_eq!(
        policy.check(ip("169.254.169.254"), 80),
        Err(AddressClass::LinkLocal)
    );
    assert_eq!(policy.check(ip("93.184.216.34"), 443), Ok(()));
    assert_eq!(
        OutgoingPolicy::default().check(IpAddr::V6(Ipv6Addr::LOCALHOST), 80),
        Err(AddressClass::Loopback)
    );
}

#[test]
fn default_policy_limits() {
    let policy = OutgoingPolicy::default();
    assert!(policy.allow.is_empty());
    assert_eq!(policy.timeout_max, Duration::from_secs(30));
    assert_eq!(policy.max_response_bytes, 1024 * 1024);
    assert_eq!(policy.max_redirects, 3);
}

#[test]
fn forbidden_messages_name_the_class() {
    let literal = OutgoingError::ForbiddenAddress {
        host: None,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        class: AddressClass::Loopback,
    };
    assert_eq!(
        literal.to_string(),
        "127.0.0.1 is a loopback address; add it to outgoing_allow to permit it"
    );
    assert_eq!(literal.code(), "forbidden_address");
    let named = OutgoingError::ForbiddenAddress {
        host: Some("metadata.internal".to_owned()),
        addr: ip("0.0.0.0"),
        class: AddressClass::Unspecified,
    };
    assert_eq!(
        named.to_string(),
        "metadata.internal resolves to 0.0.0.0, which is an unspecified address; \
         add the address to outgoing_allow to permit it"
    );
}

#[test]
fn error_codes_are_stable() {
    let cases = [
        (OutgoingError::InvalidUrl(String::new()), "invalid_url"),
        (
            OutgoingError::InvalidRequest(String::new()),
            "invalid_request",
        ),
        (OutgoingError::Timeout(Duration::from_millis(5)), "timeout"),
        (OutgoingError::Connect(String::new()), "connect"),
        (OutgoingError::TooLarge { limit: 1 }, "too_large"),
        (OutgoingError::TooManyRedirects(3), "too_many_redirects"),
        (OutgoingError::Protocol(String::new()), "protocol"),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code);
    }
}

#[test]
fn header_errors_do_not_echo_values() {
    let err = header_map(&[("x-api-key".to_owned(), "secret\nvalue".to_owned())])
        .expect_err("newline in value");
    assert_eq!(err.code(), "invalid_request");
    assert!(!err.to_string().contains("secret"), "{err}");

    let err = header_map(&[("bad name".to_owned(), "v".to_owned())]).expect_err("space");
    assert_eq!(err.code(), "invalid_request");

    let map = header_map(&[
        ("Host".to_owned(), "internal".to_owned()),
        ("X-Twice".to_owned(), "1".to_owned()),
        ("x-twice".to_owned(), "2".to_owned()),
    ])
    .expect("valid headers");
    assert!(map.get(header::HOST).is_none());
    assert_eq!(map.get_all("x-twice").iter().count(), 2);
}

#[tokio::test]
async fn shared_resolver_refuses_names_that_turned_private() {
    // The pre-check would send "localhost" to a pinned client; going through the shared
    // client directly stands in for a name whose answer changed after the check.
    let client = OutgoingClient::new(OutgoingPolicy::default());
    let shared = client.shared().expect("client builds");
    let err = shared
        .get("http://localhost:9/")
        .send()
        .await
        .expect_err("resolver refuses loopback");
    let err = map_reqwest(err);
    assert_eq!(err.code(), "forbidden_address", "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
}
