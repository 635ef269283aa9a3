//! Removing a forgotten member from its consumer group.
//!
//! When a dynamic member's session expires on the client side (the brokers
//! were unreachable, or the process was paused, for longer than the session
//! timeout), librdkafka forgets the member id and joins again as a new
//! member. The coordinator may still hold the old id: a restarted broker
//! reloads each group with the members it had, and a new coordinator after a
//! failover does the same. It then waits a whole session timeout for that id
//! to rejoin before it completes the rebalance, and assigns nothing meanwhile.
//! Only the process that held the id knows it is gone for good, and
//! librdkafka has no call to leave under an id it forgot, so this module
//! sends Kafka's LeaveGroup itself: FindCoordinator to a bootstrap broker,
//! then LeaveGroup naming the old id to the coordinator it names.
//!
//! Plaintext connections, like every chime client. FindCoordinator v3 and
//! LeaveGroup v4 (Kafka 2.4 and later) name no feature a newer broker lacks.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorResponse, GroupId, LeaveGroupResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

const FIND_COORDINATOR_VERSION: i16 = 3;
const LEAVE_GROUP_VERSION: i16 = 4;
/// FindCoordinator's key type for a consumer group.
const GROUP_KEY: i8 = 0;
/// Larger than any answer to the two requests sent here; a bigger length
/// prefix means the stream is not speaking Kafka.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What the coordinator did with the member id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// It held the id and has now removed it.
    Removed,
    /// It no longer held the id (its session had already timed out there).
    AlreadyGone,
}

/// Asks the coordinator of `group` to remove `member_id`, within `timeout`.
/// `bootstrap` is the comma-separated broker list the consumer was given.
pub fn leave_forgotten_member(
    bootstrap: &str,
    group: &str,
    member_id: &str,
    client_id: &str,
    timeout: Duration,
) -> anyhow::Result<LeaveOutcome> {
    let deadline = Instant::now() + timeout;
    let coordinator = find_coordinator(bootstrap, group, client_id, deadline)?;
    let mut conn = Connection::open(&coordinator, client_id, deadline)?;
    let request = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_members(vec![
            MemberIdentity::default().with_member_id(StrBytes::from_string(member_id.to_string()))
        ]);
    let response: LeaveGroupResponse =
        conn.call(ApiKey::LeaveGroup, &request, LEAVE_GROUP_VERSION, deadline)?;
    if let Some(e) = response.error_code.err() {
        bail!("coordinator {coordinator} refused the leave: {e}");
    }
    match response.members.first().map(|m| m.error_code.err()) {
        Some(None) => Ok(LeaveOutcome::Removed),
        Some(Some(ResponseError::UnknownMemberId)) => Ok(LeaveOutcome::AlreadyGone),
        Some(Some(e)) => Err(anyhow!("coordinator {coordinator} refused the leave: {e}")),
        None => Err(anyhow!(
            "coordinator {coordinator} answered the leave for no member"
        )),
    }
}

/// `host:port` of the broker coordinating `group`, from the first bootstrap
/// broker that answers.
fn find_coordinator(
    bootstrap: &str,
    group: &str,
    client_id: &str,
    deadline: Instant,
) -> anyhow::Result<String> {
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(GROUP_KEY);
    let mut last_error = anyhow!("no bootstrap broker in {bootstrap:?}");
    for broker in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        let answer = Connection::open(broker, client_id, deadline).and_then(|mut conn| {
            conn.call::<_, FindCoordinatorResponse>(
                ApiKey::FindCoordinator,
                &request,
                FIND_COORDINATOR_VERSION,
                deadline,
            )
        });
        match answer {
            Ok(response) => {
                if let Some(e) = response.error_code.err() {
                    bail!("{broker} knows no coordinator for group {group:?}: {e}");
                }
                return Ok(format!("{}:{}", response.host.as_str(), response.port));
            }
            Err(e) => last_error = e.context(format!("asking {broker} for the coordinator")),
        }
    }
    Err(last_error)
}

/// One blocking connection to a broker, for a request or two.
struct Connection {
    stream: TcpStream,
    client_id: StrBytes,
    next_correlation_id: i32,
}

impl Connection {
    fn open(address: &str, client_id: &str, deadline: Instant) -> anyhow::Result<Self> {
        let socket = address
            .to_socket_addrs()
            .with_context(|| format!("resolving {address}"))?
            .next()
            .ok_or_else(|| anyhow!("{address} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&socket, remaining(deadline)?)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation_id: 1,
        })
    }

    /// Sends `request` (API `key`) at `version` and reads its response.
    fn call<Req, Resp>(
        &mut self,
        key: ApiKey,
        request: &Req,
        version: i16,
        deadline: Instant,
    ) -> anyhow::Result<Resp>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut body = BytesMut::new();
        header.encode(&mut body, Req::header_version(version))?;
        request.encode(&mut body, version)?;
        let length = i32::try_from(body.len())?;

        self.stream.set_write_timeout(Some(remaining(deadline)?))?;
        self.stream.write_all(&length.to_be_bytes())?;
        self.stream.write_all(&body)?;

        let mut length = [0u8; 4];
        self.read_exact(&mut length, deadline)?;
        let length = usize::try_from(i32::from_be_bytes(length))
            .ok()
            .filter(|&n| n <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| anyhow!("response length out of range"))?;
        let mut response = vec![0u8; length];
        self.read_exact(&mut response, deadline)?;
        let mut response = bytes::Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, Resp::header_version(version))?;
        if header.correlation_id != correlation_id {
            bail!(
                "response to request {} where {correlation_id} was expected",
                header.correlation_id
            );
        }
        Resp::decode(&mut response, version)
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> anyhow::Result<()> {
        self.stream.set_read_timeout(Some(remaining(deadline)?))?;
        self.stream.read_exact(buf).context("reading the response")
    }
}

/// Time left before `deadline`, or an error once it has passed (a zero
/// socket timeout would mean "wait forever").
fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("timed out");
    }
    Ok(left)
}
