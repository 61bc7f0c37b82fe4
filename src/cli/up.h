/* The local-cluster commands of zmesh (docs/local-cluster.md): up, down, apply, delete, get, exec, logs,
 * label. Each takes argc/argv from its own name on and returns the exit status (0, 1 failure, 2 usage;
 * exec returns the command's). */
#pragma once

int cmd_up(int argc, char **argv);
int cmd_down(int argc, char **argv);
int cmd_apply(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_exec(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_label(int argc, char **argv);
