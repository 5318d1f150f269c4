// The loss budget's rule of netsim/loss_budget.h on a table of cases, for tests/netsim.rs:
// `--constants` prints `name value` lines; otherwise each input line
// `rate loss target rMax streak` gives `next_rate next_streak` (%.17g); with `--start`,
// each input line `rMax ranks` gives the start rate.
#include "loss_budget.h"

#include <cstdio>
#include <cstring>

int main(int argc, char** argv)
{
    using namespace rps_budget;
    if (argc > 1 && std::strcmp(argv[1], "--constants") == 0)
    {
        std::printf("datagram_header %u\nmessage_header %u\npacket_bytes %u\n", kDatagramHeader,
                    kMessageHeader, kPacketBytes);
        std::printf("report_bytes %u\nmin_interval %u\nmax_step %.17g\n", kReportBytes,
                    kMinInterval, kMaxStep);
        std::printf("max_streak %u\nrange %.17g\n", kMaxStreak, kRange);
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--start") == 0)
    {
        double rMax;
        unsigned ranks;
        while (std::scanf("%lf %u", &rMax, &ranks) == 2)
            std::printf("%.17g\n", StartRate(rMax, ranks));
        return 0;
    }
    double rate, loss, target, rMax;
    unsigned streak;
    while (std::scanf("%lf %lf %lf %lf %u", &rate, &loss, &target, &rMax, &streak) == 5)
    {
        uint32_t next = NextStreak(loss, target, streak);
        std::printf("%.17g %u\n", Update(rate, loss, target, rMax, next), next);
    }
    return 0;
}
