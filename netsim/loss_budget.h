// What the ns-3 model shares with rps: the sizes of rps's UDP datagrams and the loss
// budget's rule (docs/concepts.md, "The loss budget"), written once on this side. The
// Rust side is src/comm/udp/wire.rs (datagram header), src/exchange/mod.rs
// (DATAGRAM_HEADER_BYTES), src/config.rs (udp_packet_bytes) and src/comm/udp/rate.rs (the
// rule); tests/netsim.rs compiles netsim/loss_budget_cases.cc against this header and
// holds every constant and a table of cases against the Rust ones, so neither side can
// drift. No ns-3 here: plain C++17.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace rps_budget
{

// What rps's UDP transport puts in the 1,472 bytes of a 1,500-byte MTU: a 52-byte
// datagram header (MAC included) and a 24-byte message header, then a packet of 1,396
// bytes of model, exactly the packets of `rps train --packet-bytes 1396`.
constexpr uint32_t kDatagramPayload = 1472; // 1500-byte MTU minus IPv4 and UDP headers
constexpr uint32_t kDatagramHeader = 52;
constexpr uint32_t kMessageHeader = 24;
constexpr uint32_t kPacketBytes = kDatagramPayload - kDatagramHeader - kMessageHeader;
// A rate report: the datagram header and two u64 counters (accepted, highest sequence).
constexpr uint32_t kReportBytes = 16;
constexpr uint32_t kReportPayload = kDatagramHeader + kReportBytes;

// The rule's constants.
constexpr uint32_t kMinInterval = 16; // datagrams: shorter report intervals are not used
constexpr double kMaxStep = 2.0;      // one update at most doubles the rate (a cut: no bound)
constexpr uint32_t kMaxStreak = 8;    // the probe's exponent grows to this
constexpr double kRange = 1000.0;     // the lowest rate is the highest divided by this

// The quiet intervals in a row after one that lost `loss` against the target `target`.
inline uint32_t NextStreak(double loss, double target, uint32_t streak)
{
    return loss < target / 2 ? streak + 1 : 0;
}

// The rate (bytes per second) after an interval that lost `loss`, the `streak`-th quiet
// one in a row (0: not quiet): f = ((1 - L) / (1 - T))^k with k = streak, at most
// kMaxStreak, or 1 when not quiet; f at most kMaxStep (a cut has no bound), the rate
// within [rMax / kRange, rMax].
inline double Update(double rate, double loss, double target, double rMax, uint32_t streak)
{
    double f = std::pow((1 - loss) / (1 - target), double(std::clamp(streak, 1u, kMaxStreak)));
    return std::clamp(rate * std::min(f, kMaxStep), rMax / kRange, rMax);
}

// The rate a link starts at in a job of `ranks` ranks: rMax / (ranks - 1), its share of a
// receiver's port if every other rank sent to it at once, within [rMax / kRange, rMax].
inline double StartRate(double rMax, uint32_t ranks)
{
    double share = rMax / double(std::max(ranks, 2u) - 1);
    return std::clamp(share, rMax / kRange, rMax);
}

} // namespace rps_budget
