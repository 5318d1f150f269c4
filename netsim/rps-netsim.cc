// rps-netsim: what lossy learning traffic buys a datacenter, as an ns-3 (3.37) packet-level
// simulation fed by a real `rps train` run.
//
// A leaf-spine fabric carries two kinds of traffic at once:
//  - the RPS exchange of the run in the metrics file (roles, block sizes, step rate): each
//    step every worker sends its blocks to their servers, each server sends the average
//    back once its uplinks are in;
//  - latency-sensitive background flows (web-search sizes, Poisson arrivals at a load).
// Policy `reliable`: learning traffic over TCP in the same FIFO as the web flows.
// Policy `lossy`: learning traffic as paced UDP datagrams (MTU-sized, never retransmitted)
// marked DSCP CS1 and queued in the low band of a strict-priority queue disc on every port,
// so it is what is dropped under pressure; receivers stop waiting at a deadline.
// Output: one CSV (policy,load,seed,quantity,class,value) with web-flow FCT percentiles per
// size class, learning step times, and the learning bytes sent, delivered and dropped.

#include "ns3/applications-module.h"
#include "ns3/core-module.h"
#include "ns3/internet-module.h"
#include "ns3/network-module.h"
#include "ns3/point-to-point-module.h"
#include "ns3/traffic-control-module.h"

#include <hdf5.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>
#include "loss_budget.h"

using namespace ns3;

namespace
{

constexpr uint8_t kLowTos = 0x20;           // DSCP CS1 ("lower effort")
constexpr uint16_t kTcpPort = 9;            // every host listens here for TCP
constexpr uint16_t kUdpPort = 10;           // and here for learning datagrams
// rps's datagram sizes and the loss budget's rule, shared with the Rust side and checked
// against it by tests/netsim.rs.
using rps_budget::kDatagramPayload;
using rps_budget::kMinInterval;
using rps_budget::kPacketBytes;
using rps_budget::kReportPayload;
constexpr uint32_t kDatagramHeaders = rps_budget::kDatagramHeader + rps_budget::kMessageHeader;
constexpr uint32_t kTcpSegment = 1448;      // 1500 minus IPv4, TCP and timestamp option

[[noreturn]] void
Fail(const std::string& message)
{
    std::cerr << "rps-netsim: " << message << std::endl;
    std::exit(2);
}

// ---------------------------------------------------------------------------------------
// Options

struct Options
{
    std::string metrics;
    std::string policy = "reliable";
    double load = 0.3;
    double duration = 0.05; // seconds of traffic
    uint64_t seed = 1;
    uint32_t leaves = 4;
    uint32_t spines = 2;
    uint32_t hostsPerLeaf = 4;
    double hostRate = 10e9;   // bit/s
    double fabricRate = 10e9; // bit/s
    double hostDelay = 1e-6;  // s
    double fabricDelay = 1e-6;
    uint32_t queuePackets = 100;
    uint32_t lowQueuePackets = 0; // 0: same as queuePackets
    uint32_t jobs = 0;            // 0: as many as fit
    double speedup = 1.0;
    double stepRate = 0.0; // 0: measured from the metrics file
    double timeoutFactor = 1.5;
    double udpShare = 1.0;
    double lossTarget = 0; // 0: no loss budget, fixed pacing by --udp-share
    std::string traceOut;
    double minRtoMs = 200.0;
    double drain = 5.0; // s of simulated time after the last arrival
    double warmup = 0;  // s of traffic before the measured --duration
    std::string flowCdf;
    std::string output;
    std::string commandLine;
};

const char* kUsage = R"(usage: rps-netsim --metrics FILE [options]

Packet-level ns-3 simulation of a leaf-spine datacenter carrying the RPS exchange of a real
`rps train` run together with web-search background flows. Writes a CSV
(policy,load,seed,quantity,class,value).

  --metrics FILE          rps metrics file (HDF5) whose traffic pattern is replayed (required)
  --policy P              reliable (learning traffic over TCP, same queue as web flows) or
                          lossy (paced UDP datagrams, low-priority band, no retransmission)
                          [reliable]
  --load X                web-flow load as a fraction of host link capacity, in [0, 1) [0.3]
  --duration S            seconds of simulated traffic (arrivals and steps) measured [0.05]
  --warmup S              seconds of the same traffic before those, not measured (lets
                          the loss budget's rates settle) [0]
  --seed N                seed of flow arrivals, sizes, endpoints and block placement [1]
  --leaves N, --spines N, --hosts-per-leaf N                      topology [4, 2, 4]
  --host-rate R, --fabric-rate R   link rates, e.g. 10Gbps, 400Mbps [10Gbps, 10Gbps]
  --host-delay T, --fabric-delay T  propagation delays, e.g. 1us, 0.5ms [1us, 1us]
  --queue-packets N       packets per port (the FIFO; the high band when lossy) [100]
  --low-queue-packets N   packets of the low band per port when lossy [= --queue-packets]
  --jobs N                copies of the training job, each on its own hosts [as many as fit]
  --speedup X             multiply the measured step rate by X [1]
  --step-rate HZ          steps per second, instead of the metrics file's measured rate
  --timeout-factor F      lossy: a receiver waits F times a phase's paced send time
                          (plus 100 us) before treating missing datagrams as lost [1.5]
  --udp-share X           lossy: a sender paces each stream at X * host rate / fan [1]
  --loss-target T         lossy: pace each link by the loss-budget rule of docs/concepts.md
                          instead of --udp-share, keeping the loss near T, in (0, 1)
  --trace-out FILE.h5     lossy, dedicated mode: write job 0's lost and late learning
                          datagrams as a drop trace for `rps train --replay-trace
                          FILE.h5 --packet-bytes 1396`
  --min-rto-ms MS         TCP minimum retransmission timeout (and SYN timeout) [200]
  --drain S               simulated seconds allowed after the last arrival [5]
  --flow-cdf FILE         flow-size CDF (bytes, cumulative percent)
                          [websearch-flow-cdf.txt beside the build folder]
  --output FILE           CSV output [standard output]
  --help                  this text
)";

double
ParseNumber(const std::string& name, const std::string& value)
{
    char* end = nullptr;
    double v = std::strtod(value.c_str(), &end);
    if (value.empty() || end == value.c_str() || *end != '\0' || !std::isfinite(v))
    {
        Fail(name + " " + value + ": not a number");
    }
    return v;
}

uint64_t
ParseCount(const std::string& name, const std::string& value, uint64_t min)
{
    char* end = nullptr;
    unsigned long long v = std::strtoull(value.c_str(), &end, 10);
    if (value.empty() || value[0] == '-' || *end != '\0')
    {
        Fail(name + " " + value + ": not a whole number");
    }
    if (v < min)
    {
        Fail(name + " " + value + ": must be at least " + std::to_string(min));
    }
    return v;
}

// A number with a unit suffix, e.g. "10Gbps" or "1us"; units maps suffix to factor.
double
ParseWithUnit(const std::string& name,
              const std::string& value,
              const std::vector<std::pair<std::string, double>>& units,
              const std::string& example)
{
    for (const auto& [suffix, factor] : units)
    {
        if (value.size() > suffix.size() &&
            value.compare(value.size() - suffix.size(), suffix.size(), suffix) == 0)
        {
            std::string number = value.substr(0, value.size() - suffix.size());
            char* end = nullptr;
            double v = std::strtod(number.c_str(), &end);
            if (end != number.c_str() && *end == '\0' && std::isfinite(v) && v > 0)
            {
                return v * factor;
            }
        }
    }
    Fail(name + " " + value + ": expected a positive number with a unit, e.g. " + example);
}

double
ParseRate(const std::string& name, const std::string& value)
{
    return ParseWithUnit(name, value, {{"Gbps", 1e9}, {"Mbps", 1e6}, {"Kbps", 1e3}, {"bps", 1}},
                         "10Gbps");
}

double
ParseDelay(const std::string& name, const std::string& value)
{
    return ParseWithUnit(name, value, {{"ns", 1e-9}, {"us", 1e-6}, {"ms", 1e-3}, {"s", 1}},
                         "1us");
}

std::string
DefaultFlowCdf()
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0)
    {
        return "websearch-flow-cdf.txt";
    }
    std::string exe(buf, n);
    std::string dir = exe.substr(0, exe.rfind('/'));
    return dir + "/../websearch-flow-cdf.txt";
}

Options
ParseOptions(int argc, char** argv)
{
    Options o;
    for (int i = 0; i < argc; ++i)
    {
        o.commandLine += (i ? " " : "") + std::string(argv[i]);
    }
    for (int i = 1; i < argc; ++i)
    {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h")
        {
            std::cout << kUsage;
            std::exit(0);
        }
        if (arg.rfind("--", 0) != 0)
        {
            Fail("unexpected argument " + arg + " (options start with --; see --help)");
        }
        std::string name = arg;
        std::string value;
        bool inlineValue = false;
        if (auto eq = arg.find('='); eq != std::string::npos)
        {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            inlineValue = true;
        }
        auto next = [&]() -> std::string {
            if (inlineValue)
            {
                return value;
            }
            if (i + 1 >= argc)
            {
                Fail(name + ": missing value");
            }
            return argv[++i];
        };
        if (name == "--metrics")
            o.metrics = next();
        else if (name == "--policy")
        {
            o.policy = next();
            if (o.policy != "reliable" && o.policy != "lossy")
                Fail("--policy " + o.policy + ": expected reliable or lossy");
        }
        else if (name == "--load")
        {
            std::string v = next();
            o.load = ParseNumber(name, v);
            if (o.load < 0 || o.load >= 1)
                Fail("--load " + v + ": must be in [0, 1)");
        }
        else if (name == "--duration")
        {
            std::string v = next();
            o.duration = ParseNumber(name, v);
            if (o.duration <= 0 || o.duration > 100)
                Fail("--duration " + v + ": must be in (0, 100] seconds");
        }
        else if (name == "--warmup")
        {
            std::string v = next();
            o.warmup = ParseNumber(name, v);
            if (o.warmup < 0 || o.warmup > 100)
                Fail("--warmup " + v + ": must be in [0, 100] seconds");
        }
        else if (name == "--seed")
            o.seed = ParseCount(name, next(), 0);
        else if (name == "--leaves")
            o.leaves = ParseCount(name, next(), 1);
        else if (name == "--spines")
            o.spines = ParseCount(name, next(), 1);
        else if (name == "--hosts-per-leaf")
            o.hostsPerLeaf = ParseCount(name, next(), 1);
        else if (name == "--host-rate")
            o.hostRate = ParseRate(name, next());
        else if (name == "--fabric-rate")
            o.fabricRate = ParseRate(name, next());
        else if (name == "--host-delay")
            o.hostDelay = ParseDelay(name, next());
        else if (name == "--fabric-delay")
            o.fabricDelay = ParseDelay(name, next());
        else if (name == "--queue-packets")
            o.queuePackets = ParseCount(name, next(), 1);
        else if (name == "--low-queue-packets")
            o.lowQueuePackets = ParseCount(name, next(), 1);
        else if (name == "--jobs")
            o.jobs = ParseCount(name, next(), 1);
        else if (name == "--speedup" || name == "--step-rate" || name == "--timeout-factor" ||
                 name == "--udp-share" || name == "--min-rto-ms" || name == "--drain")
        {
            std::string v = next();
            double x = ParseNumber(name, v);
            if (x <= 0)
                Fail(name + " " + v + ": must be positive");
            if (name == "--udp-share" && x > 1)
                Fail("--udp-share " + v + ": must be in (0, 1]");
            (name == "--speedup"          ? o.speedup
             : name == "--step-rate"      ? o.stepRate
             : name == "--timeout-factor" ? o.timeoutFactor
             : name == "--udp-share"      ? o.udpShare
             : name == "--min-rto-ms"     ? o.minRtoMs
                                          : o.drain) = x;
        }
        else if (name == "--loss-target")
        {
            std::string v = next();
            o.lossTarget = ParseNumber(name, v);
            if (o.lossTarget <= 0 || o.lossTarget >= 1)
                Fail("--loss-target " + v + ": must be in (0, 1)");
        }
        else if (name == "--trace-out")
            o.traceOut = next();
        else if (name == "--flow-cdf")
            o.flowCdf = next();
        else if (name == "--output")
            o.output = next();
        else
            Fail("unknown option " + name + " (see --help)");
    }
    if (o.metrics.empty())
        Fail("--metrics FILE is required (an rps metrics file, see --help)");
    if (o.lossTarget > 0 && o.policy != "lossy")
        Fail("--loss-target applies to --policy lossy only");
    if (!o.traceOut.empty() && o.policy != "lossy")
        Fail("--trace-out applies to --policy lossy only (reliable learning traffic loses "
             "nothing)");
    if (o.lowQueuePackets == 0)
        o.lowQueuePackets = o.queuePackets;
    if (o.flowCdf.empty())
        o.flowCdf = DefaultFlowCdf();
    return o;
}

// ---------------------------------------------------------------------------------------
// The training run: what the exchange of one step looks like, from an rps metrics file.

struct Pattern
{
    uint32_t worldSize = 0;
    bool colocated = false;
    uint32_t servers = 0; // dedicated mode: ranks 0..servers
    std::vector<uint64_t> blockBytes;
    uint64_t numParams = 0;
    int64_t seed = 0;    // the run's --seed (a drop trace replays only under it)
    double stepRate = 0; // measured steps per second
    uint64_t steps = 0;
};

double
ReadAttr(hid_t file, const std::string& path, const char* name)
{
    if (H5Aexists(file, name) <= 0)
        Fail("--metrics " + path + ": no attribute " + name + " (not an rps metrics file?)");
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    double v = 0;
    if (attr < 0 || H5Aread(attr, H5T_NATIVE_DOUBLE, &v) < 0)
        Fail("--metrics " + path + ": attribute " + name + " is not a number");
    H5Aclose(attr);
    return v;
}

int64_t
ReadIntAttr(hid_t file, const std::string& path, const char* name)
{
    if (H5Aexists(file, name) <= 0)
        Fail("--metrics " + path + ": no attribute " + name + " (not an rps metrics file?)");
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    int64_t v = 0;
    if (attr < 0 || H5Aread(attr, H5T_NATIVE_INT64, &v) < 0)
        Fail("--metrics " + path + ": attribute " + name + " is not a whole number");
    H5Aclose(attr);
    return v;
}

std::string
ReadStringAttr(hid_t file, const std::string& path, const char* name)
{
    if (H5Aexists(file, name) <= 0)
        Fail("--metrics " + path + ": no attribute " + name + " (not an rps metrics file?)");
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    char* s = nullptr;
    if (H5Aread(attr, type, &s) < 0 || !s)
        Fail("--metrics " + path + ": attribute " + name + " is not a string");
    std::string out(s);
    H5free_memory(s);
    H5Tclose(type);
    H5Aclose(attr);
    return out;
}

Pattern
ReadPattern(const std::string& path)
{
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); // errors are reported here, once
    if (access(path.c_str(), R_OK) != 0)
        Fail("--metrics " + path + ": file not found");
    hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0)
        Fail("--metrics " + path + ": not a readable HDF5 file");
    std::string algorithm = ReadStringAttr(file, path, "algorithm");
    if (algorithm != "rps")
        Fail("--metrics " + path + ": a run of algorithm " + algorithm +
             ", but only rps runs have a server/worker exchange to replay");
    Pattern p;
    p.worldSize = ReadAttr(file, path, "world_size");
    p.colocated = ReadAttr(file, path, "colocated") != 0;
    p.servers = ReadAttr(file, path, "servers");
    auto blocks = static_cast<uint64_t>(ReadAttr(file, path, "blocks"));
    auto params = static_cast<uint64_t>(ReadAttr(file, path, "num_params"));
    p.numParams = params;
    p.seed = ReadIntAttr(file, path, "seed");
    if (p.worldSize < 2 || blocks == 0 || params < blocks ||
        (p.colocated ? blocks != p.worldSize : blocks != p.servers || p.servers >= p.worldSize))
        Fail("--metrics " + path + ": inconsistent roles (world_size " +
             std::to_string(p.worldSize) + ", servers " + std::to_string(p.servers) +
             ", blocks " + std::to_string(blocks) + ")");
    // The cut of src/exchange/layout.rs: contiguous, the first params % blocks get one more f32.
    for (uint64_t b = 0; b < blocks; ++b)
        p.blockBytes.push_back(4 * (params / blocks + (b < params % blocks ? 1 : 0)));
    // Step rate: median interval between consecutive steps of /time/wall_s, so that
    // evaluation pauses do not count as exchange time.
    if (H5Lexists(file, "/time/wall_s", H5P_DEFAULT) > 0)
    {
        hid_t ds = H5Dopen2(file, "/time/wall_s", H5P_DEFAULT);
        hid_t space = H5Dget_space(ds);
        hssize_t n = H5Sget_simple_extent_npoints(space);
        std::vector<double> wall(std::max<hssize_t>(n, 0));
        if (n > 0 && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, wall.data()) < 0)
            wall.clear();
        H5Sclose(space);
        H5Dclose(ds);
        std::vector<double> gaps;
        for (size_t i = 1; i < wall.size(); ++i)
            gaps.push_back(wall[i] - wall[i - 1]);
        p.steps = wall.size();
        if (!gaps.empty())
        {
            std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
            double median = gaps[gaps.size() / 2];
            if (median > 0)
                p.stepRate = 1.0 / median;
        }
    }
    H5Fclose(file);
    if (p.stepRate <= 0)
        Fail("--metrics " + path +
             ": /time/wall_s has fewer than 2 steps, so no step rate (give --step-rate)");
    return p;
}

// ---------------------------------------------------------------------------------------
// Web-search flow sizes: inverse of the piecewise-linear CDF.

struct FlowCdf
{
    std::vector<double> bytes, cum; // cum in [0, 1]

    double Sample(double u) const
    {
        auto it = std::lower_bound(cum.begin(), cum.end(), u);
        size_t i = std::clamp<size_t>(it - cum.begin(), 1, cum.size() - 1);
        double span = cum[i] - cum[i - 1];
        double t = span > 0 ? (u - cum[i - 1]) / span : 1.0;
        return bytes[i - 1] + t * (bytes[i] - bytes[i - 1]);
    }

    double Mean() const
    {
        double m = 0;
        for (size_t i = 1; i < bytes.size(); ++i)
            m += (cum[i] - cum[i - 1]) * (bytes[i] + bytes[i - 1]) / 2;
        return m;
    }
};

FlowCdf
ReadFlowCdf(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        Fail("--flow-cdf " + path + ": cannot read it");
    FlowCdf cdf;
    std::string line;
    int lineNo = 0;
    while (std::getline(in, line))
    {
        ++lineNo;
        line = line.substr(0, line.find('#'));
        std::istringstream ls(line);
        double b, c;
        if (!(ls >> b))
            continue;
        if (!(ls >> c) || b < 0 || c < 0 || c > 100 ||
            (!cdf.bytes.empty() && (b < cdf.bytes.back() || c < cdf.cum.back() * 100)))
            Fail("--flow-cdf " + path + ", line " + std::to_string(lineNo) +
                 ": expected 'bytes cumulative-percent', both non-decreasing");
        cdf.bytes.push_back(b);
        cdf.cum.push_back(c / 100);
    }
    if (cdf.bytes.size() < 2 || cdf.cum.back() != 1.0)
        Fail("--flow-cdf " + path + ": needs at least two points and must end at 100 percent");
    return cdf;
}

// ---------------------------------------------------------------------------------------
// Learning datagrams carry their coordinates in a packet tag (the payload stands for the
// bytes of a real header plus data).

class LearnTag : public Tag
{
  public:
    uint32_t job = 0, step = 0, block = 0, src = 0, dst = 0, bytes = 0, packet = 0;
    uint32_t seq = 0; // per link (src -> dst), from 1
    uint8_t dir = 0;  // 0 uplink, 1 downlink

    static TypeId GetTypeId()
    {
        static TypeId tid =
            TypeId("RpsLearnTag").SetParent<Tag>().AddConstructor<LearnTag>();
        return tid;
    }

    TypeId GetInstanceTypeId() const override
    {
        return GetTypeId();
    }

    // ns-3 keeps at most PacketTagList::TagData::MAX_SIZE (21) bytes per packet tag.
    uint32_t GetSerializedSize() const override
    {
        return 2 * 4 + 6 * 2 + 1;
    }

    void Serialize(TagBuffer i) const override
    {
        i.WriteU32(step);
        i.WriteU32(seq);
        for (uint32_t v : {job, block, src, dst, bytes, packet})
            i.WriteU16(v);
        i.WriteU8(dir);
    }

    void Deserialize(TagBuffer i) override
    {
        step = i.ReadU32();
        seq = i.ReadU32();
        for (uint32_t* v : {&job, &block, &src, &dst, &bytes, &packet})
            *v = i.ReadU16();
        dir = i.ReadU8();
    }

    void Print(std::ostream& os) const override
    {
        os << "job=" << job << " step=" << step << " block=" << block << " dir=" << int(dir)
           << " packet=" << packet << " seq=" << seq;
    }
};

// A receiver's rate report on the link src -> dst (docs/concepts.md, "The loss budget"):
// it travels from dst back to src.
class ReportTag : public Tag
{
  public:
    uint32_t job = 0, src = 0, dst = 0;
    uint32_t accepted = 0, highest = 0; // cumulative; highest 0: none yet

    static TypeId GetTypeId()
    {
        static TypeId tid =
            TypeId("RpsReportTag").SetParent<Tag>().AddConstructor<ReportTag>();
        return tid;
    }

    TypeId GetInstanceTypeId() const override
    {
        return GetTypeId();
    }

    uint32_t GetSerializedSize() const override
    {
        return 3 * 2 + 2 * 4;
    }

    void Serialize(TagBuffer i) const override
    {
        for (uint32_t v : {job, src, dst})
            i.WriteU16(v);
        i.WriteU32(accepted);
        i.WriteU32(highest);
    }

    void Deserialize(TagBuffer i) override
    {
        for (uint32_t* v : {&job, &src, &dst})
            *v = i.ReadU16();
        accepted = i.ReadU32();
        highest = i.ReadU32();
    }

    void Print(std::ostream& os) const override
    {
        os << "report job=" << job << " " << src << "->" << dst << " accepted=" << accepted
           << " highest=" << highest;
    }
};

// Band 1 for lossy learning traffic (DSCP CS1), band 0 for everything else.
class TosFilter : public Ipv4PacketFilter
{
  public:
    static TypeId GetTypeId()
    {
        static TypeId tid = TypeId("RpsTosFilter")
                                .SetParent<Ipv4PacketFilter>()
                                .AddConstructor<TosFilter>();
        return tid;
    }

  private:
    int32_t DoClassify(Ptr<QueueDiscItem> item) const override
    {
        auto ip = DynamicCast<Ipv4QueueDiscItem>(item);
        return ip && ip->GetHeader().GetTos() == kLowTos ? 1 : 0;
    }
};

// ---------------------------------------------------------------------------------------
// A one-way TCP byte stream carrying a sequence of messages; the receiver learns a
// message is complete when the stream has delivered its last byte.

struct TcpStream
{
    Ptr<Socket> tx;
    bool connected = false;
    bool closeWhenSent = false; // web flows: one message, then close
    bool webFlow = false;       // the receiver closes too once it has every byte
    uint64_t toSend = 0;
    uint64_t received = 0;
    uint64_t enqueued = 0;
    std::deque<std::pair<uint64_t, std::function<void()>>> ends;
};

struct Stats
{
    uint64_t udpSentBytes = 0, udpSentDatagrams = 0;
    uint64_t udpDeliveredBytes = 0, udpDeliveredDatagrams = 0;
    uint64_t udpLateDatagrams = 0;
    uint64_t udpDroppedBytes = 0, udpDroppedDatagrams = 0;
    uint64_t tcpLearnSentBytes = 0, tcpLearnDeliveredBytes = 0;
    uint64_t queueDropsHigh = 0, queueDropsLow = 0;
    uint64_t otherDropsHigh = 0; // device or IP-layer drops of non-learning packets
    uint64_t timeouts = 0;       // (block, receiver) pairs a deadline gave up on
    // The loss budget (--loss-target).
    uint64_t reportsSent = 0, reportsDropped = 0, reportsIgnored = 0;
    uint64_t backoffs = 0, probes = 0, holds = 0;
    double rateSum = 0; // R of every learning message sent, summed (bit/s)
    uint64_t messages = 0;
};

// One directed link of a job (sender rank -> receiver rank) under the lossy policy.
struct Link
{
    double rate = 0;                            // R, bit/s (sender)
    uint32_t nextSeq = 1;                       // sender: number of the next datagram
    uint32_t baseAccepted = 0, baseHighest = 0; // sender: the last report used
    uint32_t streak = 0;                        // sender: quiet intervals in a row
    uint32_t accepted = 0, highest = 0;         // receiver: cumulative; highest 0: none
    bool fresh = false;                         // receiver: datagrams since its last report
    bool used = false;                          // carried learning datagrams
};

struct WebFlow
{
    uint32_t src, dst;
    uint64_t bytes;
    double start;
    double fct = -1; // seconds; -1: not completed
    const TcpStream* stream = nullptr;
};


class Sim
{
  public:
    Options opt;
    Pattern pat;
    bool lossy;
    Stats stats;
    uint32_t nHosts;
    NodeContainer hosts, leaves, spines;
    std::vector<Ipv4Address> hostIp;
    std::map<std::pair<uint32_t, uint16_t>, TcpStream*> byPeer; // (peer ip, port) -> stream
    std::vector<std::unique_ptr<TcpStream>> streams;
    std::vector<Ptr<Socket>> udp; // one per host, sends and receives learning datagrams
    std::vector<WebFlow> flows;
    double t0 = 0.001; // traffic starts after the learning connections are up
    double tEnd = 0;
    double tMeasure = 0; // flows and steps that start from here on are measured
    double stepPeriod = 0;

    struct Job
    {
        uint32_t id;
        std::vector<Link> links; // [src * worldSize + dst]
        uint64_t completed = 0;     // measured steps
        uint32_t firstMeasured = 0; // the first measured step (0: none yet)
        // Per step (index: step number, from 1): learning datagrams sent, lost in the
        // network, and late (arrived after their receiver stopped waiting).
        std::vector<uint64_t> stepSent, stepLost, stepLate;
        std::vector<double> stepRate; // mean R of the links that send at the step's start
        std::vector<uint32_t> host; // rank -> host
        std::map<std::tuple<uint32_t, uint32_t, uint8_t>, TcpStream*> conn; // reliable
        std::mt19937_64 rng;
        // Current step.
        uint32_t step = 0;
        double start = 0;
        bool active = false;
        std::vector<uint32_t> serverOf;
        std::vector<uint32_t> upExpected, upDone; // per block: messages or datagrams
        std::vector<std::vector<bool>> upHave;    // lossy: [block][packet] a copy arrived
        std::vector<uint32_t> downExpected;       // lossy: per block, datagrams the server sent
        std::vector<uint32_t> rankPending;        // per rank: phases it still receives in
        std::vector<bool> downStarted;
        std::map<std::pair<uint32_t, uint32_t>, uint32_t> downGot; // (block, worker)
        std::map<std::pair<uint32_t, uint32_t>, bool> downClosed;  // (block, worker)
        std::vector<uint32_t> downPending;                          // per worker: blocks
        uint32_t workersDone = 0;
    };
    std::vector<Job> jobs;
    std::vector<double> stepTimes; // measured steps
    uint64_t stepsStarted = 0, stepsCompleted = 0;
    // --trace-out: job 0's unusable learning datagrams as rps trace rows (step from 0,
    // direction, src, dst, block, packet).
    std::vector<std::array<uint32_t, 6>> trace;

    explicit Sim(const Options& o, const Pattern& p)
        : opt(o),
          pat(p),
          lossy(o.policy == "lossy")
    {
    }

    std::vector<uint32_t> Workers() const
    {
        std::vector<uint32_t> w;
        for (uint32_t r = pat.colocated ? 0 : pat.servers; r < pat.worldSize; ++r)
            w.push_back(r);
        return w;
    }

    // The drop trace of job 0's measured steps, renumbered from 0.
    std::vector<std::array<uint32_t, 6>> TraceRows() const
    {
        std::vector<std::array<uint32_t, 6>> rows;
        uint32_t first = jobs[0].firstMeasured;
        if (first == 0)
            return rows;
        for (auto r : trace)
        {
            // trace rows hold the step from 0: step number - 1.
            if (r[0] + 1 < first || r[0] + 1 >= first + jobs[0].completed)
                continue;
            r[0] -= first - 1;
            rows.push_back(r);
        }
        return rows;
    }

    uint32_t Datagrams(uint64_t bytes) const
    {
        return (bytes + kPacketBytes - 1) / kPacketBytes;
    }

    Link& LinkOf(uint32_t j, uint32_t src, uint32_t dst)
    {
        return jobs[j].links[src * pat.worldSize + dst];
    }

    bool Budget() const
    {
        return opt.lossTarget > 0;
    }

    // Seconds between two full datagrams of a link paced at `rate`.
    static double Interval(double rate)
    {
        return (kDatagramPayload + 28) * 8.0 / rate;
    }

    // -- topology --------------------------------------------------------------------

    void BuildNetwork()
    {
        nHosts = opt.leaves * opt.hostsPerLeaf;
        hosts.Create(nHosts);
        leaves.Create(opt.leaves);
        spines.Create(opt.spines);
        InternetStackHelper stack;
        stack.Install(hosts);
        stack.Install(leaves);
        stack.Install(spines);

        TrafficControlHelper tch;
        if (lossy)
        {
            uint16_t handle = tch.SetRootQueueDisc(
                "ns3::PrioQueueDisc", "Priomap",
                StringValue("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"));
            auto cls = tch.AddQueueDiscClasses(handle, 2, "ns3::QueueDiscClass");
            tch.AddChildQueueDisc(handle, cls[0], "ns3::FifoQueueDisc", "MaxSize",
                                  QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS,
                                                           opt.queuePackets)));
            tch.AddChildQueueDisc(handle, cls[1], "ns3::FifoQueueDisc", "MaxSize",
                                  QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS,
                                                           opt.lowQueuePackets)));
            tch.AddPacketFilter(handle, "RpsTosFilter");
        }
        else
        {
            tch.SetRootQueueDisc("ns3::FifoQueueDisc", "MaxSize",
                                 QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS,
                                                          opt.queuePackets)));
        }

        auto link = [&](Ptr<Node> a, Ptr<Node> b, double rate, double delay,
                        const std::string& subnet) {
            PointToPointHelper p2p;
            p2p.SetDeviceAttribute("DataRate", DataRateValue(DataRate(uint64_t(rate))));
            p2p.SetChannelAttribute("Delay", TimeValue(Seconds(delay)));
            // The device holds one packet; queueing happens in the queue disc above it.
            p2p.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize", StringValue("1p"));
            NetDeviceContainer devs = p2p.Install(a, b);
            QueueDiscContainer qds = tch.Install(devs);
            for (uint32_t i = 0; i < qds.GetN(); ++i)
                qds.Get(i)->TraceConnectWithoutContext(
                    "Drop", MakeCallback(&Sim::OnQueueDrop, this));
            for (uint32_t i = 0; i < devs.GetN(); ++i)
            {
                devs.Get(i)->TraceConnectWithoutContext(
                    "MacTxDrop", MakeCallback(&Sim::OnPacketDrop, this));
                devs.Get(i)->TraceConnectWithoutContext(
                    "PhyRxDrop", MakeCallback(&Sim::OnPacketDrop, this));
            }
            Ipv4AddressHelper addr;
            addr.SetBase(subnet.c_str(), "255.255.255.252");
            return addr.Assign(devs);
        };

        // Subnets: 10.L.H.0/30 host links, 11.L.S.0/30 fabric links.
        Ipv4StaticRoutingHelper srh;
        hostIp.resize(nHosts);
        // leafSpineIf[l][s]: (leaf address, spine address, leaf iface, spine iface)
        struct Up
        {
            Ipv4Address leafAddr, spineAddr;
            uint32_t leafIf, spineIf;
        };
        std::vector<std::vector<Up>> up(opt.leaves, std::vector<Up>(opt.spines));
        std::vector<uint32_t> hostLeafIf(nHosts);
        for (uint32_t l = 0; l < opt.leaves; ++l)
        {
            for (uint32_t k = 0; k < opt.hostsPerLeaf; ++k)
            {
                uint32_t h = l * opt.hostsPerLeaf + k;
                std::ostringstream s;
                s << "10." << (h / 64) << "." << (h % 64) * 4 << ".0";
                auto ifs = link(hosts.Get(h), leaves.Get(l), opt.hostRate, opt.hostDelay,
                                s.str());
                hostIp[h] = ifs.GetAddress(0);
                Ptr<Ipv4> ipv4 = hosts.Get(h)->GetObject<Ipv4>();
                srh.GetStaticRouting(ipv4)->SetDefaultRoute(ifs.GetAddress(1),
                                                            ipv4->GetInterfaceForDevice(
                                                                ifs.Get(0).first->GetNetDevice(
                                                                    ifs.Get(0).second)));
                hostLeafIf[h] = ifs.Get(1).second;
            }
            for (uint32_t s = 0; s < opt.spines; ++s)
            {
                uint32_t n = l * opt.spines + s;
                std::ostringstream sub;
                sub << "11." << (n / 64) << "." << (n % 64) * 4 << ".0";
                auto ifs = link(leaves.Get(l), spines.Get(s), opt.fabricRate, opt.fabricDelay,
                                sub.str());
                up[l][s] = {ifs.GetAddress(0), ifs.GetAddress(1), ifs.Get(0).second,
                            ifs.Get(1).second};
            }
        }
        // Static routes: a leaf reaches a host of another leaf through spine (host mod
        // spines), a deterministic per-destination spread that never reorders a flow; a
        // spine reaches a host through its leaf. Directly connected hosts need no route.
        for (uint32_t h = 0; h < nHosts; ++h)
        {
            uint32_t hl = h / opt.hostsPerLeaf;
            uint32_t s = h % opt.spines;
            for (uint32_t l = 0; l < opt.leaves; ++l)
            {
                if (l == hl)
                    continue;
                srh.GetStaticRouting(leaves.Get(l)->GetObject<Ipv4>())
                    ->AddHostRouteTo(hostIp[h], up[l][s].spineAddr, up[l][s].leafIf);
            }
            for (uint32_t sp = 0; sp < opt.spines; ++sp)
                srh.GetStaticRouting(spines.Get(sp)->GetObject<Ipv4>())
                    ->AddHostRouteTo(hostIp[h], up[hl][sp].leafAddr, up[hl][sp].spineIf);
        }
        NodeContainer all = NodeContainer::GetGlobal();
        for (uint32_t i = 0; i < all.GetN(); ++i)
            all.Get(i)->GetObject<Ipv4L3Protocol>()->TraceConnectWithoutContext(
                "Drop", MakeCallback(&Sim::OnIpDrop, this));
    }

    // -- drops ---------------------------------------------------------------------------

    bool CountLearningDrop(Ptr<const Packet> p)
    {
        ReportTag report;
        if (p->PeekPacketTag(report))
        {
            stats.reportsDropped++;
            return true;
        }
        LearnTag tag;
        if (!p->PeekPacketTag(tag))
            return false;
        stats.udpDroppedBytes += tag.bytes;
        stats.udpDroppedDatagrams += 1;
        jobs[tag.job].stepLost.at(tag.step)++;
        Unusable(tag);
        return true;
    }

    // A learning datagram that training cannot use: lost, or too late for its receiver.
    void Unusable(const LearnTag& tag)
    {
        if (tag.job == 0)
            trace.push_back({tag.step - 1, tag.dir, tag.src, tag.dst, tag.block, tag.packet});
    }

    void OnQueueDrop(Ptr<const QueueDiscItem> item)
    {
        CountLearningDrop(item->GetPacket());
        auto ip = DynamicCast<const Ipv4QueueDiscItem>(item);
        if (ip && ip->GetHeader().GetTos() == kLowTos)
            stats.queueDropsLow++;
        else
            stats.queueDropsHigh++;
    }

    void OnPacketDrop(Ptr<const Packet> p)
    {
        if (!CountLearningDrop(p))
            stats.otherDropsHigh++;
    }

    void OnIpDrop(const Ipv4Header&, Ptr<const Packet> p, Ipv4L3Protocol::DropReason,
                  Ptr<Ipv4>, uint32_t)
    {
        OnPacketDrop(p);
    }

    // -- TCP streams ---------------------------------------------------------------------

    void Listen()
    {
        udp.resize(nHosts);
        for (uint32_t h = 0; h < nHosts; ++h)
        {
            Ptr<Socket> l = Socket::CreateSocket(hosts.Get(h), TcpSocketFactory::GetTypeId());
            l->Bind(InetSocketAddress(Ipv4Address::GetAny(), kTcpPort));
            l->Listen();
            l->SetAcceptCallback(MakeNullCallback<bool, Ptr<Socket>, const Address&>(),
                                 MakeCallback(&Sim::OnAccept, this));
            Ptr<Socket> u = Socket::CreateSocket(hosts.Get(h), UdpSocketFactory::GetTypeId());
            u->Bind(InetSocketAddress(Ipv4Address::GetAny(), kUdpPort));
            u->SetIpTos(kLowTos);
            u->SetRecvCallback(MakeCallback(&Sim::OnUdp, this));
            udp[h] = u;
        }
    }

    TcpStream* Open(uint32_t src, uint32_t dst, bool closeWhenSent)
    {
        streams.push_back(std::make_unique<TcpStream>());
        TcpStream* s = streams.back().get();
        s->closeWhenSent = closeWhenSent;
        s->webFlow = closeWhenSent;
        s->tx = Socket::CreateSocket(hosts.Get(src), TcpSocketFactory::GetTypeId());
        s->tx->Bind();
        Address local;
        s->tx->GetSockName(local);
        uint16_t port = InetSocketAddress::ConvertFrom(local).GetPort();
        byPeer[{hostIp[src].Get(), port}] = s;
        s->tx->SetConnectCallback(MakeBoundCallback(&Sim::OnConnected, s),
                                  MakeBoundCallback(&Sim::OnConnectFailed, s));
        s->tx->SetSendCallback(MakeBoundCallback(&Sim::OnSendSpace, s));
        s->tx->SetCloseCallbacks(MakeNullCallback<void, Ptr<Socket>>(),
                                 MakeBoundCallback(&Sim::OnError, s));
        s->tx->Connect(InetSocketAddress(hostIp[dst], kTcpPort));
        return s;
    }

    static void Pump(TcpStream* s)
    {
        while (s->connected && s->toSend > 0)
        {
            uint32_t room = s->tx->GetTxAvailable();
            if (room == 0)
                return;
            uint32_t n = std::min<uint64_t>({s->toSend, room, 65536});
            int sent = s->tx->Send(Create<Packet>(n));
            if (sent <= 0)
                return;
            s->toSend -= sent;
        }
        if (s->connected && s->toSend == 0 && s->closeWhenSent)
        {
            s->tx->Close();
            s->closeWhenSent = false;
        }
    }

    static void OnConnected(TcpStream* s, Ptr<Socket>)
    {
        s->connected = true;
        Pump(s);
    }

    static void OnConnectFailed(TcpStream*, Ptr<Socket>)
    {
        Fail("a TCP connection failed to open (simulation setup error)");
    }

    static void OnError(TcpStream* s, Ptr<Socket> sock)
    {
        std::cerr << "rps-netsim: a TCP connection failed at " << Simulator::Now().GetSeconds()
                  << " s (" << sock->GetErrno() << "), " << s->received << " bytes received"
                  << std::endl;
    }

    static void OnSendSpace(TcpStream* s, Ptr<Socket>, uint32_t)
    {
        Pump(s);
    }

    static void Enqueue(TcpStream* s, uint64_t bytes, std::function<void()> done)
    {
        s->enqueued += bytes;
        s->ends.emplace_back(s->enqueued, std::move(done));
        s->toSend += bytes;
        Pump(s);
    }

    void OnAccept(Ptr<Socket> sock, const Address& from)
    {
        InetSocketAddress a = InetSocketAddress::ConvertFrom(from);
        auto it = byPeer.find({a.GetIpv4().Get(), a.GetPort()});
        if (it == byPeer.end())
            Fail("internal: a TCP connection from an unknown peer");
        sock->SetRecvCallback(MakeBoundCallback(&Sim::OnTcpData, it->second));
        byPeer.erase(it);
    }

    static void OnTcpData(TcpStream* s, Ptr<Socket> sock)
    {
        while (Ptr<Packet> p = sock->Recv())
        {
            s->received += p->GetSize();
            if (s->ends.empty() && p->GetSize() > 0)
                Fail("internal: bytes beyond the last message of a stream");
        }
        while (!s->ends.empty() && s->received >= s->ends.front().first)
        {
            auto done = std::move(s->ends.front().second);
            s->ends.pop_front();
            done();
            // A finished web flow closes both ends, so that its endpoints leave the hosts'
            // demultiplexers (which ns-3 searches linearly for every packet: thousands of
            // half-closed flows made a 1 s run several times slower).
            if (s->webFlow && s->ends.empty())
                sock->Close();
        }
    }

    // -- web flows -----------------------------------------------------------------------

    void ScheduleWebFlows(const FlowCdf& cdf)
    {
        std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ULL + 1);
        std::uniform_real_distribution<double> unif(0.0, 1.0);
        double rate = opt.load * opt.hostRate * nHosts / (8 * cdf.Mean()); // flows per s
        if (rate <= 0 || nHosts < 2)
            return;
        std::exponential_distribution<double> gap(rate);
        std::uniform_int_distribution<uint32_t> pickHost(0, nHosts - 1);
        for (double t = t0 + gap(rng); t < tEnd; t += gap(rng))
        {
            WebFlow f;
            f.src = pickHost(rng);
            do
                f.dst = pickHost(rng);
            while (f.dst == f.src);
            f.bytes = std::max<uint64_t>(1, std::llround(cdf.Sample(unif(rng))));
            f.start = t;
            flows.push_back(f);
        }
        for (size_t i = 0; i < flows.size(); ++i)
            Simulator::Schedule(Seconds(flows[i].start), &Sim::StartWebFlow, this, i);
    }

    void StartWebFlow(size_t i)
    {
        WebFlow& f = flows[i];
        TcpStream* s = Open(f.src, f.dst, true);
        f.stream = s;
        Enqueue(s, f.bytes, [this, i]() {
            flows[i].fct = Simulator::Now().GetSeconds() - flows[i].start;
        });
    }

    // -- the learning exchange -----------------------------------------------------------

    void PlaceJobs()
    {
        uint32_t fit = nHosts / pat.worldSize;
        if (fit == 0)
            Fail("the run has " + std::to_string(pat.worldSize) + " ranks but the fabric only " +
                 std::to_string(nHosts) + " hosts (raise --leaves or --hosts-per-leaf)");
        uint32_t n = opt.jobs ? opt.jobs : fit;
        if (n > fit)
            Fail("--jobs " + std::to_string(n) + ": only " + std::to_string(fit) + " jobs of " +
                 std::to_string(pat.worldSize) + " ranks fit on " + std::to_string(nHosts) +
                 " hosts");
        for (uint32_t j = 0; j < n; ++j)
        {
            Job job;
            job.id = j;
            job.rng.seed(opt.seed * 1000003 + j);
            // Rank slots are spread over leaves round-robin, so exchanges cross the fabric.
            for (uint32_t r = 0; r < pat.worldSize; ++r)
            {
                uint32_t g = j * pat.worldSize + r;
                job.host.push_back((g % opt.leaves) * opt.hostsPerLeaf + g / opt.leaves);
            }
            // Under a loss budget every link starts at its share of a receiver's port
            // (docs/concepts.md), else at the fixed --udp-share pace.
            job.links.assign(pat.worldSize * pat.worldSize, Link{});
            for (Link& l : job.links)
                l.rate = opt.lossTarget > 0 ? rps_budget::StartRate(opt.hostRate, pat.worldSize)
                                            : StreamRate();
            jobs.push_back(std::move(job));
        }
    }

    // Servers a worker sends to and workers a server sends to, in one phase.
    uint32_t Fan() const
    {
        if (pat.colocated)
            return pat.worldSize - 1;
        return std::max<uint32_t>(pat.servers, pat.worldSize - pat.servers);
    }

    double StreamRate() const
    {
        return opt.hostRate * opt.udpShare / Fan();
    }

    void OpenLearningConnections()
    {
        if (lossy)
            return;
        // Sockets can only send once the simulation runs.
        Simulator::ScheduleNow(&Sim::OpenLearningConnectionsNow, this);
    }

    void OpenLearningConnectionsNow()
    {
        auto workers = Workers();
        for (Job& job : jobs)
        {
            for (uint32_t w : workers)
                for (uint32_t s = 0; s < pat.worldSize; ++s)
                {
                    bool isServer = pat.colocated || s < pat.servers;
                    if (!isServer || s == w)
                        continue;
                    job.conn[{w, s, 0}] = Open(job.host[w], job.host[s], false);
                    job.conn[{s, w, 1}] = Open(job.host[s], job.host[w], false);
                }
        }
    }

    void StartStep(uint32_t j)
    {
        Job& job = jobs[j];
        double now = Simulator::Now().GetSeconds();
        if (now >= tEnd)
        {
            job.active = false;
            return;
        }
        job.active = true;
        job.step++;
        stepsStarted++;
        job.start = now;
        job.stepSent.resize(job.step + 1, 0);
        job.stepLost.resize(job.step + 1, 0);
        job.stepLate.resize(job.step + 1, 0);
        {
            double sum = 0;
            uint32_t n = 0;
            for (const Link& l : job.links)
                if (l.used)
                    sum += l.rate, ++n;
            job.stepRate.resize(job.step + 1, 0);
            job.stepRate[job.step] = n ? sum / n : (Budget() ? opt.hostRate : StreamRate());
        }
        if (job.firstMeasured == 0 && now >= tMeasure)
            job.firstMeasured = job.step;
        uint32_t nb = pat.blockBytes.size();
        job.serverOf.resize(nb);
        for (uint32_t b = 0; b < nb; ++b)
            job.serverOf[b] = b;
        if (pat.colocated)
            std::shuffle(job.serverOf.begin(), job.serverOf.end(), job.rng);
        auto workers = Workers();
        job.upExpected.assign(nb, 0);
        job.upDone.assign(nb, 0);
        job.upHave.assign(nb, {});
        job.downExpected.assign(nb, 0);
        job.downStarted.assign(nb, false);
        job.downGot.clear();
        job.downClosed.clear();
        job.downPending.assign(pat.worldSize, 0);
        job.rankPending.assign(pat.worldSize, 0);
        job.workersDone = 0;
        for (uint32_t w : workers)
            for (uint32_t b = 0; b < nb; ++b)
                if (job.serverOf[b] != w)
                    job.downPending[w]++;
        for (uint32_t r = 0; r < pat.worldSize; ++r)
            job.rankPending[r] = job.downPending[r];
        for (uint32_t b = 0; b < nb; ++b)
            job.rankPending[job.serverOf[b]]++;
        for (uint32_t b = 0; b < nb; ++b)
        {
            uint32_t srv = job.serverOf[b];
            uint32_t n = Datagrams(pat.blockBytes[b]);
            if (lossy)
                job.upHave[b].assign(n, false);
            double slowest = 0; // the longest paced send time of an uplink of b
            for (uint32_t w : workers)
            {
                if (w == srv)
                    continue;
                job.upExpected[b] += lossy ? n : 1;
                if (lossy)
                    slowest = std::max(slowest, n * Interval(LinkOf(j, w, srv).rate));
                Send(j, w, srv, 0, b, nullptr);
            }
            if (job.upExpected[b] == 0)
                StartDownlink(j, b);
            else if (lossy)
                Simulator::Schedule(Seconds(opt.timeoutFactor * slowest + 100e-6),
                                    &Sim::UplinkDeadline, this, j, job.step, b);
        }
        for (uint32_t w : workers)
            if (job.downPending[w] == 0)
                WorkerDone(j);
    }

    // Sends block b from src to dst: over TCP, or (lossy) as datagrams paced at the link's
    // rate, the packets listed in `packets` (all when null). One datagram at a time, evenly
    // spaced: within the rule's "at most 1 ms of its rate at once" (docs/concepts.md).
    void Send(uint32_t j, uint32_t src, uint32_t dst, uint8_t dir, uint32_t b,
              const std::vector<uint32_t>* packets)
    {
        Job& job = jobs[j];
        uint64_t bytes = pat.blockBytes[b];
        if (!lossy)
        {
            uint32_t step = job.step;
            stats.tcpLearnSentBytes += bytes;
            Enqueue(job.conn.at({src, dst, dir}), bytes, [this, j, step, dst, dir, b, bytes]() {
                stats.tcpLearnDeliveredBytes += bytes;
                if (jobs[j].step != step)
                    Fail("internal: a reliable message completed after its step");
                if (dir == 0)
                {
                    if (++jobs[j].upDone[b] == jobs[j].upExpected[b])
                        StartDownlink(j, b);
                }
                else
                    DownBlockDone(j, b, dst);
            });
            return;
        }
        LearnTag tag;
        tag.job = j;
        tag.step = job.step;
        tag.block = b;
        tag.src = src;
        tag.dst = dst;
        tag.dir = dir;
        double rate = LinkOf(j, src, dst).rate;
        stats.rateSum += rate;
        stats.messages++;
        uint32_t n = packets ? packets->size() : Datagrams(bytes);
        for (uint32_t i = 0; i < n; ++i)
        {
            tag.packet = packets ? (*packets)[i] : i;
            tag.bytes = std::min<uint64_t>(kPacketBytes, bytes - uint64_t(tag.packet) * kPacketBytes);
            Simulator::Schedule(Seconds(i * Interval(rate)), &Sim::SendDatagram, this,
                                job.host[src], job.host[dst], tag);
        }
    }

    void SendDatagram(uint32_t srcHost, uint32_t dstHost, LearnTag tag)
    {
        Link& link = LinkOf(tag.job, tag.src, tag.dst);
        tag.seq = link.nextSeq++;
        link.used = true;
        jobs[tag.job].stepSent.at(tag.step)++;
        Ptr<Packet> p = Create<Packet>(kDatagramHeaders + tag.bytes);
        p->AddPacketTag(tag);
        stats.udpSentBytes += tag.bytes;
        stats.udpSentDatagrams++;
        SendLow(srcHost, dstHost, p);
    }

    void SendLow(uint32_t srcHost, uint32_t dstHost, Ptr<Packet> p)
    {
        // ns-3 3.37's UDP SendTo takes the TOS from the address, not the socket.
        InetSocketAddress to(hostIp[dstHost], kUdpPort);
        to.SetTos(kLowTos);
        udp[srcHost]->SendTo(p, 0, to);
    }

    void OnUdp(Ptr<Socket> sock)
    {
        Address from;
        while (Ptr<Packet> p = sock->RecvFrom(from))
        {
            ReportTag report;
            if (p->PeekPacketTag(report))
            {
                OnReport(report);
                continue;
            }
            LearnTag tag;
            if (!p->PeekPacketTag(tag))
                Fail("internal: a datagram without its tag");
            stats.udpDeliveredBytes += tag.bytes;
            stats.udpDeliveredDatagrams++;
            Link& link = LinkOf(tag.job, tag.src, tag.dst);
            link.accepted++;
            link.highest = std::max(link.highest, tag.seq);
            link.fresh = true;
            Job& job = jobs[tag.job];
            bool late = tag.step != job.step || !job.active ||
                        (tag.dir == 0 ? bool(job.downStarted[tag.block])
                                      : job.downClosed[{tag.block, tag.dst}]);
            if (late)
            {
                stats.udpLateDatagrams++;
                job.stepLate.at(tag.step)++;
                Unusable(tag);
                continue;
            }
            if (tag.dir == 0)
            {
                job.upHave[tag.block][tag.packet] = true;
                if (++job.upDone[tag.block] == job.upExpected[tag.block])
                    StartDownlink(tag.job, tag.block);
            }
            else if (++job.downGot[{tag.block, tag.dst}] == job.downExpected[tag.block])
                DownBlockDone(tag.job, tag.block, tag.dst);
        }
    }

    // A rank has stopped receiving for this step (every phase it receives in is complete
    // or past its deadline): under a loss budget it reports to each peer that sent it
    // datagrams since its last report (docs/concepts.md, "The loss budget").
    void RankPhaseDone(uint32_t j, uint32_t r)
    {
        Job& job = jobs[j];
        if (--job.rankPending[r] > 0 || !Budget())
            return;
        for (uint32_t peer = 0; peer < pat.worldSize; ++peer)
        {
            Link& link = LinkOf(j, peer, r);
            if (peer == r || !link.fresh)
                continue;
            link.fresh = false;
            ReportTag report;
            report.job = j;
            report.src = peer;
            report.dst = r;
            report.accepted = link.accepted;
            report.highest = link.highest;
            Ptr<Packet> p = Create<Packet>(kReportPayload);
            p->AddPacketTag(report);
            stats.reportsSent++;
            SendLow(job.host[r], job.host[peer], p);
        }
    }

    // The sender of a link takes a report: the rule of docs/concepts.md, "The loss budget:
    // rate control of the lossy class", applied once per report.
    void OnReport(const ReportTag& report)
    {
        Link& link = LinkOf(report.job, report.src, report.dst);
        int64_t sent = int64_t(report.highest) - link.baseHighest;
        if (sent < kMinInterval)
        {
            // Too short an interval to measure: keep the last report as its start.
            stats.reportsIgnored++;
            return;
        }
        int64_t arrived = int64_t(report.accepted) - link.baseAccepted;
        double loss = std::clamp(1.0 - double(arrived) / sent, 0.0, 1.0);
        link.baseAccepted = report.accepted;
        link.baseHighest = report.highest;
        link.streak = rps_budget::NextStreak(loss, opt.lossTarget, link.streak);
        double before = link.rate;
        link.rate = rps_budget::Update(link.rate, loss, opt.lossTarget, opt.hostRate, link.streak);
        if (link.rate < before)
            stats.backoffs++;
        else if (link.rate > before)
            stats.probes++;
        else
            stats.holds++;
    }

    void UplinkDeadline(uint32_t j, uint32_t step, uint32_t b)
    {
        Job& job = jobs[j];
        if (job.step != step || !job.active || job.downStarted[b])
            return;
        stats.timeouts++;
        StartDownlink(j, b);
    }

    // The server of b sends the average to every worker: over TCP the whole block; lossy,
    // the packets of which some copy arrived (or all, co-located: it has its own), as rps
    // does; workers wait out their deadline for the rest.
    void StartDownlink(uint32_t j, uint32_t b)
    {
        Job& job = jobs[j];
        job.downStarted[b] = true;
        uint32_t srv = job.serverOf[b];
        std::vector<uint32_t> packets;
        if (lossy)
            for (uint32_t k = 0; k < job.upHave[b].size(); ++k)
                if (pat.colocated || job.upHave[b][k])
                    packets.push_back(k);
        job.downExpected[b] = packets.size();
        for (uint32_t w : Workers())
        {
            if (w == srv)
                continue;
            if (!lossy)
            {
                Send(j, srv, w, 1, b, nullptr);
                continue;
            }
            if (!packets.empty())
                Send(j, srv, w, 1, b, &packets);
            // A worker waits for what the server sends (for the whole block when the
            // server has nothing: it cannot know that).
            uint32_t n = packets.empty() ? Datagrams(pat.blockBytes[b]) : packets.size();
            double wait = opt.timeoutFactor * n * Interval(LinkOf(j, srv, w).rate) + 100e-6;
            Simulator::Schedule(Seconds(wait), &Sim::DownlinkDeadline, this, j, job.step, b, w);
        }
        RankPhaseDone(j, srv);
    }

    void DownlinkDeadline(uint32_t j, uint32_t step, uint32_t b, uint32_t w)
    {
        Job& job = jobs[j];
        if (job.step != step || !job.active || job.downClosed[{b, w}])
            return;
        stats.timeouts++;
        DownBlockDone(j, b, w);
    }

    void DownBlockDone(uint32_t j, uint32_t b, uint32_t w)
    {
        Job& job = jobs[j];
        job.downClosed[{b, w}] = true;
        RankPhaseDone(j, w);
        if (--job.downPending[w] == 0)
            WorkerDone(j);
    }

    void WorkerDone(uint32_t j)
    {
        Job& job = jobs[j];
        if (++job.workersDone < Workers().size())
            return;
        double now = Simulator::Now().GetSeconds();
        stepsCompleted++;
        if (job.firstMeasured && job.step >= job.firstMeasured)
        {
            stepTimes.push_back(now - job.start);
            job.completed++;
        }
        job.active = false;
        // Synchronous training: the next step starts one period after this one, or now
        // if the exchange took longer than that.
        double next = std::max(job.start + stepPeriod, now);
        Simulator::Schedule(Seconds(next - now), &Sim::StartStep, this, j);
    }

    void ScheduleLearning()
    {
        double rate = opt.stepRate > 0 ? opt.stepRate : pat.stepRate * opt.speedup;
        stepPeriod = 1.0 / rate;
        for (uint32_t j = 0; j < jobs.size(); ++j)
            Simulator::Schedule(Seconds(t0 + stepPeriod * j / jobs.size()), &Sim::StartStep,
                                this, j);
    }
};

double
Quantile(std::vector<double> v, double q)
{
    if (v.empty())
        return NAN;
    std::sort(v.begin(), v.end());
    double pos = q * (v.size() - 1);
    size_t i = static_cast<size_t>(pos);
    if (i + 1 >= v.size())
        return v.back();
    return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

// --trace-out: job 0's unusable datagrams as a drop trace in the layout `rps train
// --replay-trace` reads (docs/formats.md, "Drop traces"; src/drop/trace.rs): /trace/dropped
// (u32, N x 6) and the attributes Replay::load checks, those of the training run whose
// pattern was simulated, with the packet size of the simulated datagrams.
void
WriteTrace(const Options& opt, const Pattern& pat, uint64_t steps,
           std::vector<std::array<uint32_t, 6>> rows)
{
    std::sort(rows.begin(), rows.end());
    std::string tmp = opt.traceOut + ".tmp";
    hid_t file = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0)
        Fail("--trace-out " + opt.traceOut + ": cannot write it");
    auto intAttr = [&](const char* name, int64_t v) {
        hid_t space = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a);
        H5Sclose(space);
    };
    auto strAttr = [&](const char* name, const std::string& v) {
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, H5T_VARIABLE);
        H5Tset_cset(type, H5T_CSET_UTF8);
        hid_t space = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        const char* c = v.c_str();
        H5Awrite(a, type, &c);
        H5Aclose(a);
        H5Sclose(space);
        H5Tclose(type);
    };
    intAttr("trace_recorded", 1);
    intAttr("steps_completed", steps);
    intAttr("world_size", pat.worldSize);
    intAttr("servers", pat.servers);
    intAttr("colocated", pat.colocated);
    intAttr("blocks", pat.blockBytes.size());
    intAttr("num_params", pat.numParams);
    intAttr("seed", pat.seed);
    intAttr("packet_bytes", kPacketBytes);
    strAttr("status", "completed");
    strAttr("source", "rps-netsim");
    strAttr("netsim_command_line", opt.commandLine);
    hid_t group = H5Gcreate2(file, "trace", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {rows.size(), 6};
    hsize_t maxDims[2] = {H5S_UNLIMITED, 6};
    hsize_t chunk[2] = {4096, 6};
    hid_t space = H5Screate_simple(2, dims, maxDims);
    hid_t props = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(props, 2, chunk);
    hid_t ds = H5Dcreate2(group, "dropped", H5T_STD_U32LE, space, H5P_DEFAULT, props,
                          H5P_DEFAULT);
    bool ok = ds >= 0 && (rows.empty() || H5Dwrite(ds, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL,
                                                   H5P_DEFAULT, rows.data()) >= 0);
    H5Dclose(ds);
    H5Pclose(props);
    H5Sclose(space);
    H5Gclose(group);
    if (H5Fclose(file) < 0 || !ok || std::rename(tmp.c_str(), opt.traceOut.c_str()) != 0)
        Fail("--trace-out " + opt.traceOut + ": cannot write it");
}

} // namespace

NS_OBJECT_ENSURE_REGISTERED(LearnTag);
NS_OBJECT_ENSURE_REGISTERED(ReportTag);
NS_OBJECT_ENSURE_REGISTERED(TosFilter);

int
main(int argc, char** argv)
{
    Options opt = ParseOptions(argc, argv);
    Pattern pat = ReadPattern(opt.metrics);
    if (!opt.traceOut.empty() && pat.colocated)
        Fail("--trace-out: the run in --metrics is co-located, whose block-to-server "
             "permutation the simulator does not reproduce; use a dedicated-mode run");
    FlowCdf cdf = ReadFlowCdf(opt.flowCdf);

    Config::SetDefault("ns3::TcpL4Protocol::SocketType", TypeIdValue(TcpCubic::GetTypeId()));
    Config::SetDefault("ns3::TcpSocket::SegmentSize", UintegerValue(kTcpSegment));
    Config::SetDefault("ns3::TcpSocket::ConnTimeout", TimeValue(MilliSeconds(opt.minRtoMs)));
    Config::SetDefault("ns3::TcpSocketBase::MinRto", TimeValue(MilliSeconds(opt.minRtoMs)));
    // An ACK per segment: with ns-3's default delayed ACKs (every second segment, else
    // after 200 ms), large flows here stalled after a timeout, recovering one segment per
    // RTO for seconds (SACK on or off).
    Config::SetDefault("ns3::TcpSocket::DelAckCount", UintegerValue(1));
    // TIME_WAIT for 2 x 1 ms instead of 2 x 120 s: ports are never reused here, and a
    // closed flow's endpoint would otherwise slow every packet's demultiplexing.
    Config::SetDefault("ns3::TcpSocketBase::MaxSegLifetime", DoubleValue(0.001));

    Sim sim(opt, pat);
    sim.BuildNetwork();
    sim.Listen();
    sim.PlaceJobs();
    sim.tMeasure = sim.t0 + opt.warmup;
    sim.tEnd = sim.tMeasure + opt.duration;
    sim.OpenLearningConnections();
    sim.ScheduleLearning();
    sim.ScheduleWebFlows(cdf);

    auto wallStart = std::chrono::steady_clock::now();
    Simulator::Stop(Seconds(sim.tEnd + opt.drain));
    Simulator::Run();
    double simEnd = Simulator::Now().GetSeconds();
    double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wallStart).count();

    // ---- results ----
    std::ofstream file;
    if (!opt.output.empty())
    {
        file.open(opt.output);
        if (!file)
            Fail("--output " + opt.output + ": cannot write it");
    }
    std::ostream& out = opt.output.empty() ? std::cout : file;
    out << std::setprecision(10);
    out << "# rps-netsim (ns-3 " << "3.37" << "): " << opt.commandLine << "\n";
    out << "policy,load,seed,quantity,class,value\n";
    std::string policy = opt.policy;
    if (opt.lossTarget > 0)
    {
        std::ostringstream label;
        label << "lossy-target-" << opt.lossTarget;
        policy = label.str();
    }
    auto row = [&](const std::string& q, const std::string& cls, double v) {
        out << policy << "," << opt.load << "," << opt.seed << "," << q << "," << cls << ","
            << v << "\n";
    };
    row("hosts", "", sim.nHosts);
    row("jobs", "", sim.jobs.size());
    row("ranks_per_job", "", pat.worldSize);
    row("block_bytes", "", pat.blockBytes[0]);
    row("blocks", "", pat.blockBytes.size());
    row("measured_step_rate_hz", "", pat.stepRate);
    row("step_rate_hz", "", 1.0 / sim.stepPeriod);
    row("duration_s", "", opt.duration);
    row("warmup_s", "", opt.warmup);
    row("simulated_s", "", simEnd);
    row("wall_s", "", wall);

    const std::vector<std::pair<std::string, std::pair<double, double>>> classes = {
        {"<100KB", {0, 100e3}}, {"100KB-1MB", {100e3, 1e6}}, {">1MB", {1e6, INFINITY}},
        {"all", {0, INFINITY}}};
    for (const auto& [name, range] : classes)
    {
        std::vector<double> fct;
        uint64_t count = 0;
        for (const WebFlow& f : sim.flows)
        {
            if (f.bytes < range.first || f.bytes >= range.second || f.start < sim.tMeasure)
                continue;
            ++count;
            if (f.fct >= 0)
                fct.push_back(f.fct * 1e6);
        }
        row("flows", name, count);
        row("flows_completed", name, fct.size());
        row("fct_p50_us", name, Quantile(fct, 0.5));
        row("fct_p99_us", name, Quantile(fct, 0.99));
        double mean = 0;
        for (double x : fct)
            mean += x / fct.size();
        row("fct_mean_us", name, fct.empty() ? NAN : mean);
    }
    row("learning_steps_started", "", sim.stepsStarted);
    row("learning_steps_completed", "", sim.stepsCompleted);
    row("learning_steps_measured", "", sim.stepTimes.size());
    uint64_t fewest = UINT64_MAX;
    for (const auto& job : sim.jobs)
        fewest = std::min(fewest, job.completed);
    row("learning_steps_per_job_min", "", fewest);
    row("learning_step_p50_ms", "", Quantile(sim.stepTimes, 0.5) * 1e3);
    row("learning_step_p99_ms", "", Quantile(sim.stepTimes, 0.99) * 1e3);
    const Stats& s = sim.stats;
    if (sim.lossy)
    {
        row("learning_bytes_sent", "", s.udpSentBytes);
        row("learning_bytes_delivered", "", s.udpDeliveredBytes);
        row("learning_bytes_dropped", "", s.udpDroppedBytes);
        row("learning_datagrams_sent", "", s.udpSentDatagrams);
        row("learning_datagrams_delivered", "", s.udpDeliveredDatagrams);
        row("learning_datagrams_dropped", "", s.udpDroppedDatagrams);
        row("learning_datagrams_late", "", s.udpLateDatagrams);
        // Loss over the measured steps (every step without --warmup): lost in the network,
        // and unusable (lost, or late).
        uint64_t sent = 0, lost = 0, late = 0;
        for (const auto& job : sim.jobs)
            for (size_t k = job.firstMeasured ? job.firstMeasured : job.stepSent.size();
                 k < job.stepSent.size(); ++k)
            {
                sent += job.stepSent[k];
                lost += job.stepLost[k];
                late += job.stepLate[k];
            }
        row("learning_measured_datagrams_sent", "", sent);
        row("learning_measured_datagrams_lost", "", lost);
        row("learning_measured_datagrams_late", "", late);
        row("learning_loss_rate", "", sent ? double(lost) / sent : NAN);
        row("learning_unusable_rate", "", sent ? double(lost + late) / sent : NAN);
        row("learning_timeouts", "", s.timeouts);
        // Spread of the loss over steps: the unusable share of each step's datagrams.
        std::vector<double> stepLoss;
        for (const auto& job : sim.jobs)
            for (size_t k = job.firstMeasured ? job.firstMeasured : job.stepSent.size();
                 k < job.stepSent.size(); ++k)
                if (job.stepSent[k] > 0)
                    stepLoss.push_back(double(job.stepLost[k] + job.stepLate[k]) /
                                       job.stepSent[k]);
        row("learning_step_loss_p10", "", Quantile(stepLoss, 0.1));
        row("learning_step_loss_p50", "", Quantile(stepLoss, 0.5));
        row("learning_step_loss_p90", "", Quantile(stepLoss, 0.9));
        // Pacing: R of every message sent, and of every link at the end.
        std::vector<double> finalRates;
        for (const auto& job : sim.jobs)
            for (const Link& l : job.links)
                if (l.used)
                    finalRates.push_back(l.rate / 1e9);
        row("loss_target", "", opt.lossTarget);
        row("learning_rate_mean_gbps", "", s.messages ? s.rateSum / s.messages / 1e9 : NAN);
        row("learning_rate_final_p50_gbps", "", Quantile(finalRates, 0.5));
        row("learning_rate_final_min_gbps", "",
            finalRates.empty() ? NAN : *std::min_element(finalRates.begin(), finalRates.end()));
        row("learning_rate_final_max_gbps", "",
            finalRates.empty() ? NAN : *std::max_element(finalRates.begin(), finalRates.end()));
        row("rate_reports_sent", "", s.reportsSent);
        row("rate_reports_dropped", "", s.reportsDropped);
        row("rate_reports_ignored", "", s.reportsIgnored);
        row("rate_backoffs", "", s.backoffs);
        row("rate_probes", "", s.probes);
        row("rate_holds", "", s.holds);
        // Job 0, step by step (measured steps, numbered from 0 as in the trace): the
        // unusable share of its datagrams, and the mean rate of its links at the step's start.
        const auto& j0 = sim.jobs[0];
        for (uint64_t k = 0; k < j0.completed; ++k)
        {
            size_t i = j0.firstMeasured + k;
            row("job0_step_loss", "step " + std::to_string(k),
                j0.stepSent[i] ? double(j0.stepLost[i] + j0.stepLate[i]) / j0.stepSent[i] : NAN);
            row("job0_step_rate_gbps", "step " + std::to_string(k), j0.stepRate.at(i) / 1e9);
        }
        row("trace_steps", "", sim.jobs[0].completed);
        row("trace_rows", "", sim.TraceRows().size());
    }
    else
    {
        row("learning_bytes_sent", "", s.tcpLearnSentBytes);
        row("learning_bytes_delivered", "", s.tcpLearnDeliveredBytes);
        row("learning_bytes_dropped", "", 0);
        row("learning_loss_rate", "", 0);
    }
    row("queue_drops_high", "", s.queueDropsHigh);
    row("queue_drops_low", "", s.queueDropsLow);
    row("other_drops", "", s.otherDropsHigh);

    size_t done = 0;
    for (const WebFlow& f : sim.flows)
    {
        done += f.fct >= 0;
        if (f.fct < 0)
            std::cerr << "rps-netsim: web flow " << f.src << "->" << f.dst << " of " << f.bytes
                      << " bytes started at " << f.start << " s did not complete ("
                      << (f.stream ? f.stream->received : 0) << " bytes received)" << std::endl;
    }
    std::cerr << "rps-netsim: " << opt.policy << " load " << opt.load << ": " << done << "/"
              << sim.flows.size() << " web flows completed, " << sim.stepTimes.size()
              << " learning steps, " << wall << " s" << std::endl;
    if (!opt.traceOut.empty())
        WriteTrace(opt, pat, sim.jobs[0].completed, sim.TraceRows());
    Simulator::Destroy();
    return 0;
}
