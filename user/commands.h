/* SPDX-License-Identifier: GPL-2.0 */
/* commands.h: the do_<cmd>() entry points of the bgswitch command. */
#ifndef BGS_COMMANDS_H
#define BGS_COMMANDS_H

int do_attach(int argc, char **argv);
int do_detach(int argc, char **argv);
int do_service(int argc, char **argv);
int do_backend(int argc, char **argv);
int do_flip(int argc, char **argv);
int do_rollback(int argc, char **argv);
int do_shift(int argc, char **argv);
int do_rollout(int argc, char **argv);
int do_check(int argc, char **argv);
int do_drain(int argc, char **argv);
int do_status(int argc, char **argv);
int do_exporter(int argc, char **argv);
int do_watch(int argc, char **argv);
int do_timeouts(int argc, char **argv);
int do_gc(int argc, char **argv);
int do_limits(int argc, char **argv);
int do_agent(int argc, char **argv);
int do_local(int argc, char **argv);
int do_gen(int argc, char **argv);

#endif /* BGS_COMMANDS_H */
