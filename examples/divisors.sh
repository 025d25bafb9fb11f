#!/bin/sh
# The seed example as a program job: print N and how many divisors it has between 2 and
# sqrt(N) (0 for a prime). awk keeps it dependency-free on every node.
# usage: divisors.sh N
awk -v n="$1" 'BEGIN {
  if (n == "" || n < 2) { print "usage: divisors.sh N (N >= 2)" > "/dev/stderr"; exit 2 }
  c = 0
  for (i = 2; i * i <= n; i++) if (n % i == 0) c++
  printf "%.0f %d\n", n, c
}'
