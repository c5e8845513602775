// C++ containers, strings, exceptions and threads on liballocscope.so (operator new/delete
// reach it through libstdc++'s malloc/free). Prints a checksum that must match a glibc run.
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

static unsigned long work(int seed) {
    std::map<std::string, std::vector<int>> m;
    std::unordered_map<int, std::unique_ptr<std::string>> u;
    unsigned long sum = 0;
    for (int i = 0; i < 20000; i++) {
        std::string key = "k" + std::to_string((i * 7919 + seed) % 5000);
        m[key].push_back(i);
        u[i % 3000] = std::make_unique<std::string>(key + key);
        try {
            if (i % 997 == 0) throw std::runtime_error(key);
        } catch (const std::exception &e) {
            sum += std::string(e.what()).size();
        }
    }
    for (auto &kv : m) sum += kv.first.size() * kv.second.size();
    for (auto &kv : u) sum += kv.second->size();
    return sum;
}

int main() {
    std::vector<unsigned long> results(8);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; t++) threads.emplace_back([&results, t] { results[t] = work(t); });
    for (auto &t : threads) t.join();
    unsigned long total = 0;
    for (auto r : results) total += r;
    std::printf("%lu\n", total);
    return 0;
}
