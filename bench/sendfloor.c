// sendfloor: what writing one small message to each of N loopback TCP sockets costs the writer,
// with nothing else: no WebSocket framing, no GraphQL, no runtime. It is the floor under
// section (l)'s "webhook to subscriber, 10,000 on one session" row: a server that sends each
// subscriber its own TCP segment cannot deliver to N subscribers faster than N of these sends
// on its one core (on loopback the receiver's TCP processing runs in the sender's send()).
//
// One process (the writer, on --writer-cpu) accepts N connections from a child process (the
// readers, on --reader-cpu, draining every socket with epoll as a load client would), then for
// each of --rounds rounds sends 120 bytes (the size of a `next` message of (l)) to every socket
// and times the loop: CPU time of the writing thread and wall time. Prints one JSON line.
//
//   gcc -O2 -o bench/target/sendfloor bench/sendfloor.c    (bench/run.sh does this)
//   bench/target/sendfloor [sockets=10000] [rounds=5] [writer-cpu=0] [reader-cpu=1]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

static double seconds(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void readers(struct sockaddr_in address, int sockets, int cpu) {
  pin(cpu);
  int poll = epoll_create1(0);
  for (int i = 0; i < sockets; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
      perror("sendfloor: connect");
      exit(1);
    }
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(poll, EPOLL_CTL_ADD, fd, &event);
  }
  struct epoll_event events[256];
  char buffer[4096];
  for (;;) {
    int ready = epoll_wait(poll, events, 256, -1);
    for (int i = 0; i < ready; i++) {
      if (read(events[i].data.fd, buffer, sizeof buffer) == 0) exit(0);
    }
  }
}

int main(int argc, char **argv) {
  int sockets = argc > 1 ? atoi(argv[1]) : 10000, rounds = argc > 2 ? atoi(argv[2]) : 5;
  int writer_cpu = argc > 3 ? atoi(argv[3]) : 0, reader_cpu = argc > 4 ? atoi(argv[4]) : 1;
  if (sockets < 1 || rounds < 1) {
    fprintf(stderr, "usage: sendfloor [sockets] [rounds] [writer-cpu] [reader-cpu]\n");
    return 2;
  }
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t length = sizeof address;
  if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4096) != 0 ||
      getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
    perror("sendfloor: listen");
    return 1;
  }
  pid_t child = fork();
  if (child == 0) readers(address, sockets, reader_cpu);
  pin(writer_cpu);
  int *fds = calloc(sockets, sizeof(int));
  for (int i = 0; i < sockets; i++) {
    fds[i] = accept(listener, NULL, NULL);
    if (fds[i] < 0) {
      perror("sendfloor: accept");
      kill(child, SIGKILL);
      return 1;
    }
    int one = 1;
    setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  char message[120];
  memset(message, 'x', sizeof message);
  double *cpu = calloc(rounds, sizeof(double)), *wall = calloc(rounds, sizeof(double));
  for (int round = 0; round < rounds; round++) {
    usleep(300000);
    double cpu0 = seconds(CLOCK_THREAD_CPUTIME_ID), wall0 = seconds(CLOCK_MONOTONIC);
    for (int i = 0; i < sockets; i++) {
      if (send(fds[i], message, sizeof message, 0) != sizeof message) {
        perror("sendfloor: send");
        kill(child, SIGKILL);
        return 1;
      }
    }
    cpu[round] = (seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0) / sockets * 1e6;
    wall[round] = (seconds(CLOCK_MONOTONIC) - wall0) * 1e3;
  }
  for (int i = 0; i < sockets; i++) close(fds[i]);
  waitpid(child, NULL, 0);
  qsort(cpu, rounds, sizeof(double), compare);
  qsort(wall, rounds, sizeof(double), compare);
  printf("{\"sockets\": %d, \"rounds\": %d, \"cpu_us_per_send\": {\"median\": %.2f, \"min\": %.2f, \"max\": %.2f}, "
         "\"round_ms\": {\"median\": %.1f, \"min\": %.1f, \"max\": %.1f}}\n",
         sockets, rounds, cpu[rounds / 2], cpu[0], cpu[rounds - 1], wall[rounds / 2], wall[0], wall[rounds - 1]);
  return 0;
}
