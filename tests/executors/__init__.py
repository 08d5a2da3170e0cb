"""Tests of the executors: local, Ray (a real 2-node cluster), SkyPilot (a fake SDK), simulated, devices."""
