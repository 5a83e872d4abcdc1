"""One build of one package for one kernel (prepare, steps, load check, finish, publish),
the load check, and the job budget that runs builds side by side."""
