//! Sender authentication end to end: the real engine against a real DNS server
//! (dnsmasq serving the SPF, DKIM and DMARC records this test writes), messages signed
//! here with a fresh RSA key, sent with Python's smtplib.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

/// A 2048-bit RSA key made by openssl: (PKCS#8 PEM, the DKIM `p=` value).
fn rsa_key(dir: &Path) -> (String, String) {
    let key = dir.join("dkim.pem");
    let (ok, out) = run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let pubkey = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(pubkey.status.success());
    let b64 = python(&format!(
        "import base64; print(base64.b64encode(bytes.fromhex('{}')).decode())",
        pubkey
            .stdout
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    (
        std::fs::read_to_string(&key).unwrap(),
        b64.trim().to_string(),
    )
}

/// `message` with a DKIM-Signature for `domain` (selector `sel`) on top.
fn sign(pem: &str, domain: &str, message: &str) -> String {
    #[allow(deprecated)]
    let key = RsaKey::<Sha256>::from_pkcs8_pem(pem).expect("key");
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message.as_bytes())
        .expect("signs");
    format!("{}{message}", sig.to_header())
}

fn message(from: &str, subject: &str, extra: &str) -> String {
    format!(
        "{extra}From: {from}\r\nTo: bob@example.test\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\nHello Bob,\r\nthe quarterly figures are attached.\r\n"
    )
}

/// Sends `content` (written to a file) from `sender`; returns the reply to the data.
fn send(engine: &Engine, dir: &Path, sender: &str, content: &str) -> String {
    let file = dir.join("msg.eml");
    std::fs::write(&file, content).unwrap();
    python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{}", {}, local_hostname="client.test")
s.ehlo("client.test")
s.mail("{sender}")
s.rcpt("bob@example.test")
code, reply = s.data(open("{}", "rb").read())
print(code, reply.decode())
s.quit()
"#,
        engine.smtp.ip(),
        engine.smtp.port(),
        file.display()
    ))
    .trim()
    .to_string()
}

#[test]
fn spf_dkim_and_dmarc_are_checked_stamped_and_enforced() {
    let dir = TempDir::new("auth");
    let (pem, p) = rsa_key(dir.path());
    let dns_port = free_port();
    let (p1, p2) = p.split_at(200);
    // dnsmasq takes the text as written (no quotes); a comma starts another string.
    let dkim_record = format!("--txt-record=sel._domainkey.good.test,v=DKIM1; k=rsa; p={p1},{p2}");
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            "--txt-record=good.test,v=spf1 ip4:127.0.0.1 -all",
            "--txt-record=_dmarc.good.test,v=DMARC1; p=reject",
            &dkim_record,
            // strict.test: this client may not send for it, and it says reject.
            "--txt-record=strict.test,v=spf1 ip4:192.0.2.1 -all",
            "--txt-record=_dmarc.strict.test,v=DMARC1; p=reject",
            // soft.test: the same, with quarantine.
            "--txt-record=soft.test,v=spf1 ip4:192.0.2.1 -all",
            "--txt-record=_dmarc.soft.test,v=DMARC1; p=quarantine",
            "--txt-record=client.test,v=spf1 ip4:127.0.0.1 -all",
            "--ptr-record=1.0.0.127.in-addr.arpa,client.test",
            "--address=/client.test/127.0.0.1",
            // Names not listed do not exist (NXDOMAIN), as on the Internet.
            "--local=/test/",
        ],
    );
    let sink = Sink::start(
        format!("127.0.0.1:{}", free_port())
            .parse::<SocketAddr>()
            .unwrap(),
    );
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });

    // Signed, from an address SPF allows: everything passes. A forged result claiming
    // our name is removed; another server's stays.
    let forged = "Authentication-Results: mx.bulwark.test; dmarc=pass header.from=good.test\r\nAuthentication-Results: mx.elsewhere.test; spf=pass\r\n";
    let signed = sign(
        &pem,
        "good.test",
        &message("Alice <alice@good.test>", "q1", ""),
    );
    let reply = send(
        &engine,
        dir.path(),
        "alice@good.test",
        &format!("{forged}{signed}"),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    let head = m.content.split("\r\n\r\n").next().unwrap_or("").to_string();
    let ours: Vec<&str> = head
        .split("\r\nAuthentication-Results:")
        .skip(1)
        .filter(|f| f.trim_start().starts_with("mx.bulwark.test"))
        .collect();
    assert_eq!(ours.len(), 1, "exactly one result of ours:\n{head}");
    let ar = ours[0];
    assert!(
        ar.contains("dkim=pass header.d=good.test header.s=sel"),
        "{ar}"
    );
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert!(ar.contains("iprev=pass"), "{ar}");
    assert!(
        !ar.contains("dmarc=pass header.from=good.test\r\nAuthentication-Results: mx.elsewhere")
    );
    assert!(
        head.contains("Authentication-Results: mx.elsewhere.test; spf=pass"),
        "{head}"
    );
    let status = head.split("X-Spam-Status:").nth(1).unwrap_or("");
    assert!(
        status.contains("DKIM_VALID_AU") && status.contains("SPF_PASS"),
        "{status}"
    );

    // Not allowed by SPF, unsigned, and the domain says reject: refused in the session.
    let reply = send(
        &engine,
        dir.path(),
        "mallory@strict.test",
        &message("mallory@strict.test", "q2", ""),
    );
    assert!(
        reply.starts_with("550 5.7.1 Message refused: it fails the DMARC policy of strict.test"),
        "{reply}"
    );

    // The same with p=quarantine: accepted into the quarantine, not delivered.
    let reply = send(
        &engine,
        dir.path(),
        "eve@soft.test",
        &message("eve@soft.test", "q3", ""),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let (ok, text) = engine.quarantine(&["list", "--json"]);
    assert!(ok, "{text}");
    let q: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(q.len(), 1, "{text}");
    assert_eq!(q[0]["verdict"], "authfail");
    assert!(
        q[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "DMARC_QUAR")
    );

    // A signature broken in transit (the body changed after signing) does not verify; SPF
    // passes and is aligned, so DMARC passes and the message is delivered.
    let tampered = sign(&pem, "good.test", &message("alice@good.test", "q4", ""))
        .replace("quarterly", "QUARTERLY");
    let reply = send(&engine, dir.path(), "alice@good.test", &tampered);
    assert!(reply.starts_with("250 "), "{reply}");
    let msgs = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(msgs.len(), 2);
    let head = msgs[1]
        .content
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    // mail-auth reports a body hash mismatch as neutral (RFC 6376 §6.3).
    assert!(
        head.contains("\tdkim=neutral (body hash did not verify)"),
        "{head}"
    );
    assert!(head.contains("\tdmarc=pass"), "{head}");
    let status = head.split("X-Spam-Status:").nth(1).unwrap_or("");
    assert!(status.contains("DKIM_INVALID"), "{status}");

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 2);
    assert_eq!(
        engine.metric("bulwark_inspection_verdicts_total{verdict=\"authfail\",action=\"reject\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_auth_results_total{method=\"dmarc\",result=\"pass\"}"),
        2.0
    );
    assert_eq!(
        engine.metric("bulwark_auth_results_total{method=\"spf\",result=\"fail\"}"),
        2.0
    );
    assert_eq!(
        engine.metric("bulwark_auth_results_total{method=\"dkim\",result=\"fail\"}"),
        1.0
    );
    assert_eq!(engine.metric("bulwark_auth_timeouts_total"), 0.0);
}
